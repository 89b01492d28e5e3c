"""The notifier as a real server (uvicorn) against the real broker and database, watched
through a real WebSocket client."""

import asyncio
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from mxw_local.infra import free_port
from mxw_notifier.main import create_app, server_config
from mxw_notifier.settings import NotifierSettings
from mxw_shared import topics
from mxw_shared.contracts import Envelope, JobState, JobStatus, Stage
from mxw_shared.jobs import record_status
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


@dataclass(frozen=True)
class Notifier:
    http: str
    ws: str


@pytest.fixture(scope="module")
async def notifier(infra):
    port = free_port()
    settings = infra.settings(
        NotifierSettings, "notifier", host="127.0.0.1", port=port, ping_interval_s=1.0
    )
    server = uvicorn.Server(server_config(create_app(settings), settings))
    task = asyncio.create_task(server.serve())
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient() as client:
        while True:
            assert not task.done(), "notifier server stopped during start-up"
            if server.started and (await client.get(f"{base}/readyz")).status_code == 200:
                break
            assert time.monotonic() < deadline, "notifier never became ready"
            await asyncio.sleep(0.2)
    yield Notifier(http=base, ws=f"ws://127.0.0.1:{port}")
    server.should_exit = True
    await asyncio.wait_for(task, 60)


async def record(
    db, job_id: uuid.UUID, state: JobState, stage: Stage = Stage.transcribe, **kw
) -> tuple[Envelope, JobStatus]:
    """Write a status the way the stages do: history row + outbox row in one transaction."""
    fields = {"progress": 0.5, "message": None, **kw}
    async with db.acquire() as conn, conn.transaction():
        owner = await conn.fetchval("SELECT owner_id FROM jobs WHERE id = $1", job_id)
        envelope = await record_status(
            conn, job_id=job_id, owner_id=owner, stage=stage, state=state, source="tests", **fields
        )
    event = JobStatus(job_id=job_id, owner_id=owner, stage=stage, state=state, **fields)
    return envelope, event


async def emit(db, publish, job_id: uuid.UUID, state: JobState, **kw) -> Envelope:
    """Record, then publish the same event under the same id, as the outbox relay does."""
    envelope, event = await record(db, job_id, state, **kw)
    await publish(event, envelope)
    return envelope


async def recv(ws: ClientConnection) -> dict:
    import json

    return json.loads(await asyncio.wait_for(ws.recv(), 30))


async def drain(ws: ClientConnection) -> tuple[list[dict], int | None]:
    """Every message until the server closes; returns them and the close code."""
    import json

    messages = []
    try:
        while True:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
    except ConnectionClosed:
        pass
    return messages, ws.close_code


async def test_owner_follows_a_job_live_until_done(notifier, db, make_job, publish, dev_issuer):
    job_id = await make_job("alice")
    token = dev_issuer.mint("alice")
    async with connect(f"{notifier.ws}/ws/jobs/{job_id}?token={token}") as ws:
        first = await emit(db, publish, job_id, JobState.running, progress=0.0, message="start")
        got = await recv(ws)
        assert got["event_id"] == first.id
        assert got["job_id"] == str(job_id)
        assert (got["stage"], got["state"], got["message"]) == ("transcribe", "running", "start")
        assert set(got) == {
            "event_id", "job_id", "stage", "state", "progress", "message", "error", "time"
        }  # fmt: skip

        middle = await emit(db, publish, job_id, JobState.running, stage=Stage.chunk, progress=0.9)
        last = await emit(db, publish, job_id, JobState.done, stage=Stage.embed, progress=1.0)
        rest, code = await drain(ws)

    assert [m["event_id"] for m in rest] == [middle.id, last.id]
    assert rest[-1]["state"] == "done"
    assert rest[-1]["progress"] == pytest.approx(1.0)
    assert code == 1000


async def test_history_and_live_overlap_is_sent_once(notifier, db, make_job, publish, dev_issuer):
    job_id = await make_job("alice")
    before, before_event = await record(db, job_id, JobState.running, progress=0.1)
    headers = {"Authorization": f"Bearer {dev_issuer.mint('alice')}"}
    async with connect(f"{notifier.ws}/ws/jobs/{job_id}", additional_headers=headers) as ws:
        assert (await recv(ws))["event_id"] == before.id  # from history: now subscribed
        # The relay publishes the same event late: it is already in the client's history.
        await publish(before_event, before)
        second = await emit(db, publish, job_id, JobState.running, progress=0.5)
        await publish(before_event, before)  # and once more, redelivered
        failed = await emit(db, publish, job_id, JobState.failed, error="boom", progress=0.5)
        rest, code = await drain(ws)

    assert [m["event_id"] for m in rest] == [second.id, failed.id]
    assert rest[-1]["error"] == "boom"
    assert code == 1000


async def test_other_users_and_unknown_jobs_look_the_same(notifier, make_job, dev_issuer):
    job_id = await make_job("alice")
    for path in (f"/ws/jobs/{job_id}", f"/ws/jobs/{uuid.uuid4()}", "/ws/jobs/not-a-uuid"):
        async with connect(f"{notifier.ws}{path}?token={dev_issuer.mint('bob')}") as ws:
            messages, code = await drain(ws)
        assert (messages, code) == ([], 4404), path


async def test_admin_may_watch_any_job(notifier, db, make_job, dev_issuer):
    job_id = await make_job("alice")
    envelope, _ = await record(db, job_id, JobState.cancelled)
    async with connect(
        f"{notifier.ws}/ws/jobs/{job_id}?token={dev_issuer.mint('root', admin=True)}"
    ) as ws:
        messages, code = await drain(ws)
    assert [m["event_id"] for m in messages] == [envelope.id]
    assert code == 1000


@pytest.mark.parametrize("token", [None, "not-a-jwt", "expired"])
async def test_missing_or_bad_token_closes_4401(notifier, make_job, dev_issuer, token):
    job_id = await make_job("alice")
    if token == "expired":
        token = dev_issuer.mint("alice", ttl_s=-3600)
    url = f"{notifier.ws}/ws/jobs/{job_id}" + (f"?token={token}" if token else "")
    async with connect(url) as ws:
        messages, code = await drain(ws)
    assert (messages, code) == ([], 4401)


async def test_token_as_first_subprotocol(notifier, db, make_job, dev_issuer):
    job_id = await make_job("alice")
    envelope, _ = await record(db, job_id, JobState.done, stage=Stage.embed, progress=1.0)
    protocol = f"bearer.{dev_issuer.mint('alice')}"
    async with connect(f"{notifier.ws}/ws/jobs/{job_id}", subprotocols=[protocol]) as ws:
        assert ws.subprotocol == protocol
        messages, code = await drain(ws)
    assert [m["event_id"] for m in messages] == [envelope.id]
    assert code == 1000


async def test_finished_job_sends_history_then_closes(notifier, db, make_job, dev_issuer):
    job_id = await make_job("alice")
    sent = [
        (await record(db, job_id, JobState.running, progress=0.0))[0],
        (await record(db, job_id, JobState.running, stage=Stage.chunk, progress=0.8))[0],
        (await record(db, job_id, JobState.done, stage=Stage.embed, progress=1.0))[0],
    ]
    async with connect(f"{notifier.ws}/ws/jobs/{job_id}?token={dev_issuer.mint('alice')}") as ws:
        messages, code = await drain(ws)
    assert [m["event_id"] for m in messages] == [e.id for e in sent]
    assert [m["state"] for m in messages] == ["running", "running", "done"]
    assert code == 1000


async def test_after_resumes_by_event_id_or_row_id(notifier, db, make_job, publish, dev_issuer):
    job_id = await make_job("alice")
    a = (await record(db, job_id, JobState.running, progress=0.1))[0]
    b = (await record(db, job_id, JobState.running, progress=0.2))[0]
    b_row = await db.fetchval("SELECT id FROM job_events WHERE event_id = $1", b.id)
    token = dev_issuer.mint("alice")

    url = f"{notifier.ws}/ws/jobs/{job_id}?token={token}&after={a.id}"
    async with connect(url) as ws:
        assert (await recv(ws))["event_id"] == b.id
        c = await emit(db, publish, job_id, JobState.done, stage=Stage.embed, progress=1.0)
        rest, code = await drain(ws)
    assert ([m["event_id"] for m in rest], code) == ([c.id], 1000)

    async with connect(f"{notifier.ws}/ws/jobs/{job_id}?token={token}&after={b_row}") as ws:
        messages, code = await drain(ws)
    assert ([m["event_id"] for m in messages], code) == ([c.id], 1000)

    async with connect(f"{notifier.ws}/ws/jobs/{job_id}?token={token}&after={c.id}") as ws:
        messages, code = await drain(ws)
    assert (messages, code) == ([], 1000)


async def test_every_watcher_gets_events_and_bad_records_are_skipped(
    notifier, db, make_job, publish, kafka_producer, dev_issuer
):
    job_id = await make_job("alice")
    url = f"{notifier.ws}/ws/jobs/{job_id}?token={dev_issuer.mint('alice')}"
    start = (await record(db, job_id, JobState.running, progress=0.0))[0]
    async with connect(url) as one, connect(url) as two:
        assert (await recv(one))["event_id"] == start.id
        assert (await recv(two))["event_id"] == start.id
        # Garbage and a record without CloudEvents headers, on the job's own partition.
        await kafka_producer.send_and_wait(
            topics.JOB_STATUS,
            value=b"{not json",
            key=str(job_id).encode(),
            headers=[
                (k, v.encode())
                for k, v in Envelope(type=JobStatus.ce_type, source="x").to_headers().items()
            ],
        )
        await kafka_producer.send_and_wait(topics.JOB_STATUS, value=b"{}", key=str(job_id).encode())
        end = await emit(db, publish, job_id, JobState.done, stage=Stage.embed, progress=1.0)
        for ws in (one, two):
            messages, code = await drain(ws)
            assert ([m["event_id"] for m in messages], code) == ([end.id], 1000)


async def test_http_history_with_the_same_scoping(notifier, db, make_job, dev_issuer):
    job_id = await make_job("alice")
    a = (await record(db, job_id, JobState.running, progress=0.1))[0]
    b = (await record(db, job_id, JobState.running, progress=0.2))[0]
    url = f"{notifier.http}/jobs/{job_id}/events"
    alice = {"Authorization": f"Bearer {dev_issuer.mint('alice')}"}
    async with httpx.AsyncClient() as client:
        ok = await client.get(url, headers=alice)
        resumed = await client.get(url, headers=alice, params={"after": a.id})
        foreign = await client.get(
            url, headers={"Authorization": f"Bearer {dev_issuer.mint('bob')}"}
        )
        anonymous = await client.get(url)
        metrics = await client.get(f"{notifier.http}/metrics")

    assert ok.status_code == 200
    body = ok.json()
    assert [e["event_id"] for e in body["events"]] == [a.id, b.id]
    assert body["finished"] is False
    assert [e["event_id"] for e in resumed.json()["events"]] == [b.id]
    assert foreign.status_code == 404
    assert foreign.headers["content-type"].startswith("application/problem+json")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert "mxw_notifier_open_connections" in metrics.text


async def test_open_connections_gauge_follows_sockets(notifier, make_job, dev_issuer):
    job_id = await make_job("alice")

    async def gauge() -> float:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{notifier.http}/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("mxw_notifier_open_connections "))
        return float(line.split()[1])

    before = await gauge()
    async with connect(f"{notifier.ws}/ws/jobs/{job_id}?token={dev_issuer.mint('alice')}"):
        deadline = time.monotonic() + 10
        while await gauge() != before + 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    deadline = time.monotonic() + 10
    while await gauge() != before:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
