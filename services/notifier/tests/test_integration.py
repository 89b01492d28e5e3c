"""Two notifier replicas as real servers (uvicorn) against the real broker and database,
watched through real WebSocket and SSE clients."""

import asyncio
import base64
import json
import os
import secrets
import socket
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest
from mxw_shared import topics
from mxw_shared.contracts import Envelope, JobState, JobStatus, Stage
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

KEYS = {"job_id", "seq", "event_id", "stage", "state", "progress", "message", "error", "time"}
MAX_PER_USER = 3


@dataclass(frozen=True)
class Replicas:
    a: object
    b: object


@pytest.fixture(scope="module")
async def replicas(start_notifier):
    """Two replicas: each in its own consumer group, no shared state but the database."""
    options = {
        "connection_queue_size": 8,
        "max_behind_s": 5.0,
        "close_timeout_s": 10.0,
        "max_connections_per_user": MAX_PER_USER,
        "auth_leeway_s": 0,
        "sse_keepalive_s": 0.5,
        # Small kernel buffers: a client that stops reading stalls its feed after ~100 KB.
        "send_buffer_bytes": 16384,
        # Test clients may pause reading for a moment on a busy loop: 1 s pings, 3 s grace.
        "ping_timeout_s": 3.0,
    }
    a_cm, b_cm = start_notifier(**options), start_notifier(**options)
    a, b = await asyncio.gather(a_cm.__aenter__(), b_cm.__aenter__())
    try:
        yield Replicas(a, b)
    finally:
        await asyncio.gather(a_cm.__aexit__(None, None, None), b_cm.__aexit__(None, None, None))


@pytest.fixture(scope="module")
def notifier(replicas):
    return replicas.a


async def recv(ws: ClientConnection, timeout_s: float = 30) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


async def drain(ws: ClientConnection, timeout_s: float = 30) -> tuple[list[dict], int | None]:
    """Every message until the server closes; returns them and the close code."""
    messages = []
    try:
        while True:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout_s)))
    except ConnectionClosed:
        pass
    return messages, ws.close_code


async def collect(ws: ClientConnection, count: int, timeout_s: float = 30) -> list[dict]:
    return [await recv(ws, timeout_s) for _ in range(count)]


def seqs(messages: list[dict], job_id: uuid.UUID | None = None) -> list[int]:
    return [m["seq"] for m in messages if job_id is None or m["job_id"] == str(job_id)]


async def metric(base: str, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{base}/metrics")).text
    values = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(name)]
    return sum(values)


# ---- one job, live ----


async def test_owner_follows_a_job_live_until_done(notifier, make_job, emit, dev_issuer):
    job_id = await make_job("alice")
    token = dev_issuer.mint("alice")
    async with connect(f"{notifier.ws}/ws/jobs/{job_id}?access_token={token}") as ws:
        first = await emit(job_id, JobState.running, progress=0.0, message="start")
        got = await recv(ws)
        assert (got["event_id"], got["seq"], got["job_id"]) == (first.id, 1, str(job_id))
        assert (got["stage"], got["state"], got["message"]) == ("transcribe", "running", "start")
        assert set(got) == KEYS | {"coalesced"}
        assert got["coalesced"] is False

        await emit(job_id, JobState.running, stage=Stage.chunk, progress=0.9)
        last = await emit(job_id, JobState.done, stage=Stage.embed, progress=1.0)
        rest, code = await drain(ws)

    assert seqs(rest) == [2, 3]
    assert rest[-1]["event_id"] == last.id
    assert rest[-1]["state"] == "done"
    assert rest[-1]["progress"] == pytest.approx(1.0)
    assert code == 1000


async def test_history_live_overlap_and_redeliveries_are_sent_once(
    notifier, make_job, record, publish, emit, dev_issuer
):
    job_id = await make_job("alice")
    before, before_event = await record(job_id, JobState.running, progress=0.1)
    headers = {"Authorization": f"Bearer {dev_issuer.mint('alice')}"}
    async with connect(f"{notifier.ws}/ws/jobs/{job_id}", additional_headers=headers) as ws:
        assert (await recv(ws))["event_id"] == before.id  # from history: now subscribed
        await publish(before_event, before)  # the relay publishes it late
        await emit(job_id, JobState.running, progress=0.5)
        await publish(before_event, before)  # and once more, redelivered
        await emit(job_id, JobState.failed, error="boom", progress=0.5)
        rest, code = await drain(ws)
    assert (seqs(rest), rest[-1]["error"], code) == ([2, 3], "boom", 1000)


async def test_a_gap_in_the_live_stream_is_filled_from_history(
    notifier, make_job, record, publish, emit, kafka_producer, dev_issuer
):
    """Events the broker lost (or a record another system published without a seq) cannot
    leave a hole: the feed reads what it missed from Postgres."""
    job_id = await make_job("alice")
    url = f"{notifier.ws}/ws/jobs/{job_id}?access_token={dev_issuer.mint('alice')}"
    async with connect(url) as ws:
        await emit(job_id, JobState.running, progress=0.1)
        assert seqs([await recv(ws)]) == [1]
        await record(job_id, JobState.running, progress=0.2)  # 2 and 3 never published
        await record(job_id, JobState.running, progress=0.3)
        await emit(job_id, JobState.running, progress=0.4)
        assert seqs(await collect(ws, 3)) == [2, 3, 4]
        # A record without seq: the history after what was sent goes out instead.
        unnumbered, _ = await record(job_id, JobState.running, progress=0.5)
        await publish(JobStatus(job_id=job_id, owner_id="alice", stage=Stage.chunk,
                                state=JobState.running, progress=0.5), unnumbered)  # fmt: skip
        assert seqs([await recv(ws)]) == [5]
        # Garbage and a record without CloudEvents headers, on the job's partition: skipped.
        await kafka_producer.send_and_wait(
            topics.JOB_STATUS, value=b"{not json", key=str(job_id).encode(),
            headers=[(k, v.encode()) for k, v in
                     Envelope(type=JobStatus.ce_type, source="x").to_headers().items()],
        )  # fmt: skip
        await kafka_producer.send_and_wait(topics.JOB_STATUS, value=b"{}", key=str(job_id).encode())
        await emit(job_id, JobState.done, stage=Stage.embed, progress=1.0)
        rest, code = await drain(ws)
    assert (seqs(rest), code) == ([6], 1000)


async def test_finished_job_sends_history_then_closes_and_after_resumes(
    notifier, make_job, record, dev_issuer
):
    job_id = await make_job("alice")
    for state, stage in (
        (JobState.running, Stage.transcribe),
        (JobState.running, Stage.chunk),
        (JobState.done, Stage.embed),
    ):
        await record(job_id, state, stage=stage)
    token = dev_issuer.mint("alice")
    base = f"{notifier.ws}/ws/jobs/{job_id}?access_token={token}"
    async with connect(base) as ws:
        messages, code = await drain(ws)
    assert (seqs(messages), [m["state"] for m in messages], code) == (
        [1, 2, 3], ["running", "running", "done"], 1000,
    )  # fmt: skip
    async with connect(f"{base}&after=1") as ws:
        assert (seqs((await drain(ws))[0]), ws.close_code) == ([2, 3], 1000)
    async with connect(f"{base}&after=3") as ws:
        assert await drain(ws) == ([], 1000)


# ---- auth and ownership ----


async def test_token_by_header_subprotocol_or_query_on_both_routes(
    notifier, make_job, record, dev_issuer
):
    job_id = await make_job("tess")
    await record(job_id, JobState.done, stage=Stage.embed, progress=1.0)
    token = dev_issuer.mint("tess")
    ways = [
        {"additional_headers": {"Authorization": f"Bearer {token}"}},
        {"subprotocols": [f"bearer.{token}"]},
        {"subprotocols": ["bearer", token]},
        {"query": f"?access_token={token}"},
    ]
    for way in ways:
        query = way.pop("query", "")
        async with connect(f"{notifier.ws}/ws/jobs/{job_id}{query}", **way) as ws:
            if "subprotocols" in way:
                assert ws.subprotocol == way["subprotocols"][0]
            messages, code = await drain(ws)
        assert (seqs(messages), code) == ([1], 1000), way
        # The all-jobs route takes the same transports: it stays open (no close code yet).
        # The only thing it may carry is the live copy of tess's own event, when the outbox
        # relay publishes it after this feed opened (it does under load).
        async with connect(f"{notifier.ws}/ws/jobs{query}", **way) as ws:
            try:
                live = json.loads(await asyncio.wait_for(ws.recv(), 0.3))
                assert (live["job_id"], live["seq"]) == (str(job_id), 1), way
            except TimeoutError:
                pass
            assert ws.close_code is None, way
        way["query"] = query


@pytest.mark.parametrize("path", ["/ws/jobs/{job}", "/ws/jobs"])
@pytest.mark.parametrize("token", [None, "not-a-jwt", "expired", "wrong-audience"])
async def test_missing_or_bad_token_closes_4401_before_any_data(
    notifier, make_job, dev_issuer, path, token
):
    job_id = await make_job("alice")
    if token == "expired":
        token = dev_issuer.mint("alice", ttl_s=-3600)
    elif token == "wrong-audience":
        token = dev_issuer.mint("alice", audience="someone-else")
    url = f"{notifier.ws}{path.format(job=job_id)}" + (f"?access_token={token}" if token else "")
    async with connect(url) as ws:
        assert await drain(ws) == ([], 4401)


async def test_other_users_jobs_unknown_jobs_and_admin_only_options(
    notifier, make_job, record, dev_issuer
):
    job_id = await make_job("alice")
    bob = dev_issuer.mint("bob")
    for path in (f"/ws/jobs/{job_id}", f"/ws/jobs/{uuid.uuid4()}", "/ws/jobs/not-a-uuid",
                 f"/ws/jobs?resume={job_id}:0"):  # fmt: skip
        sep = "&" if "?" in path else "?"
        async with connect(f"{notifier.ws}{path}{sep}access_token={bob}") as ws:
            assert await drain(ws) == ([], 4404), path
    async with connect(f"{notifier.ws}/ws/jobs?all=true&access_token={bob}") as ws:
        assert await drain(ws) == ([], 4403)
    for bad in (f"/ws/jobs/{job_id}?after=x", "/ws/jobs?resume=nonsense"):
        async with connect(f"{notifier.ws}{bad}&access_token={bob}") as ws:
            assert await drain(ws) == ([], 4400), bad
    # An admin may watch anyone's job.
    await record(job_id, JobState.cancelled)
    admin = dev_issuer.mint("root", admin=True)
    async with connect(f"{notifier.ws}/ws/jobs/{job_id}?access_token={admin}") as ws:
        messages, code = await drain(ws)
    assert ([m["state"] for m in messages], code) == (["cancelled"], 1000)


async def test_the_feed_ends_when_the_token_expires(notifier, dev_issuer):
    token = dev_issuer.mint("ephemeral", ttl_s=2)
    started = time.monotonic()
    async with connect(f"{notifier.ws}/ws/jobs?access_token={token}") as ws:
        assert await drain(ws, timeout_s=10) == ([], 4401)
    assert 0.5 < time.monotonic() - started < 8


async def test_connections_per_user_are_limited(notifier, dev_issuer, make_job):
    token = dev_issuer.mint("limited")
    job_id = await make_job("limited")
    url = f"{notifier.ws}/ws/jobs?access_token={token}"
    opened = [await connect(url) for _ in range(MAX_PER_USER)]
    try:
        await asyncio.sleep(0.2)  # each accepted and counted
        async with connect(url) as extra:
            assert await drain(extra) == ([], 4429)
        async with httpx.AsyncClient() as client:
            sse = await client.get(
                f"{notifier.http}/jobs/{job_id}/events",
                params={"access_token": token},
                headers={"Accept": "text/event-stream"},
            )
        assert sse.status_code == 429
        assert sse.headers["content-type"].startswith("application/problem+json")
    finally:
        for ws in opened:
            await ws.close()
    # Closed feeds free their slots.
    deadline = time.monotonic() + 10
    while True:
        async with connect(url) as again:
            try:
                await asyncio.wait_for(again.recv(), 0.3)
            except TimeoutError:
                break  # open, not refused
            except ConnectionClosed:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)


# ---- all of a user's jobs, across replicas, with resume ----


async def test_two_replicas_every_client_gets_every_event_of_its_jobs_in_order_once(
    replicas, make_job, emit, dev_issuer
):
    """Clients on both replicas; events of three jobs of two users, interleaved: each feed
    receives exactly the events it may see, each job's in seq order, none twice."""
    carol_jobs = [await make_job("carol"), await make_job("carol")]
    dave_job = await make_job("dave")
    carol, dave = dev_issuer.mint("carol"), dev_issuer.mint("dave")
    admin = dev_issuer.mint("root", admin=True)
    clients = {}
    for name, replica in (("a", replicas.a), ("b", replicas.b)):
        for client, path in (
            ("carol-all", f"/ws/jobs?access_token={carol}"),
            ("carol-one", f"/ws/jobs/{carol_jobs[0]}?access_token={carol}"),
            ("dave-all", f"/ws/jobs?access_token={dave}"),
            ("admin-all", f"/ws/jobs?all=true&access_token={admin}"),
        ):
            # Unbounded client queue: it reads only after every event was published.
            clients[f"{client}-{name}"] = await connect(f"{replica.ws}{path}", max_queue=None)
    await asyncio.sleep(0.3)  # every handshake done and subscribed
    rounds = 6
    try:
        for i in range(rounds):
            for job in (*carol_jobs, dave_job):
                state = JobState.done if i == rounds - 1 else JobState.running
                await emit(job, state, progress=i / rounds)
        expected_counts = {"carol-all": 2 * rounds, "carol-one": rounds, "dave-all": rounds}
        for name, ws in clients.items():
            kind = name.rsplit("-", 1)[0]
            if kind == "admin-all":
                got = await collect(ws, 3 * rounds)
                with pytest.raises(TimeoutError):  # nothing more
                    await asyncio.wait_for(ws.recv(), 0.3)
            elif kind == "carol-one":
                got, code = await drain(ws)
                assert code == 1000
            else:
                got = await collect(ws, expected_counts[kind])
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.3)
            jobs = {
                "carol-all": carol_jobs, "carol-one": carol_jobs[:1], "dave-all": [dave_job],
                "admin-all": [*carol_jobs, dave_job],
            }[kind]  # fmt: skip
            assert {m["job_id"] for m in got} == {str(j) for j in jobs}, name
            for job in jobs:
                assert seqs(got, job) == list(range(1, rounds + 1)), (name, job)
    finally:
        for ws in clients.values():
            await ws.close()


async def test_disconnect_mid_job_and_resume_on_the_other_replica_is_gap_free(
    replicas, make_job, emit, dev_issuer
):
    first_job, second_job = await make_job("erin"), await make_job("erin")
    token = dev_issuer.mint("erin")
    received: list[dict] = []
    async with connect(f"{replicas.a.ws}/ws/jobs?access_token={token}") as ws:
        for _ in range(3):
            await emit(first_job, JobState.running, progress=0.2)
            await emit(second_job, JobState.running, progress=0.2)
        received += await collect(ws, 6)
    # Gone: these happen while the client is away.
    for _ in range(4):
        await emit(first_job, JobState.running, progress=0.5)
    await emit(second_job, JobState.done, stage=Stage.embed, progress=1.0)
    last = {j: max(seqs(received, j)) for j in (first_job, second_job)}
    resume = ",".join(f"{j}:{s}" for j, s in last.items())
    async with connect(f"{replicas.b.ws}/ws/jobs?resume={resume}&access_token={token}") as ws:
        received += await collect(ws, 5)  # what was missed, from history
        await emit(first_job, JobState.done, stage=Stage.embed, progress=1.0)
        received += await collect(ws, 1)  # then live
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
    assert seqs(received, first_job) == list(range(1, 9))
    assert seqs(received, second_job) == [1, 2, 3, 4]


# ---- slow and dead clients ----


async def test_a_slow_client_does_not_delay_a_fast_one_and_is_closed_4408(
    notifier, make_job, emit, dev_issuer
):
    """The slow client stops reading (a tiny receive buffer, no client-side queue); events of
    many jobs with large messages fill every buffer on the way, its feed falls behind and is
    closed with 4408, while a fast client of the same user gets each event at once."""
    jobs = [await make_job("slowpoke") for _ in range(12)]
    token = dev_issuer.mint("slowpoke")
    url = f"{notifier.ws}/ws/jobs?access_token={token}"
    dropped_before = await metric(notifier.http, "mxw_notifier_ws_dropped_clients_total")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = int(notifier.ws.rsplit(":", 1)[1])
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    slow = await connect(url, sock=sock, compression=None, max_queue=1)
    fast = await connect(url, compression=None)
    latencies: list[float] = []
    fast_got: list[dict] = []

    async def read_fast(count: int) -> None:
        while len(fast_got) < count:
            message = json.loads(await asyncio.wait_for(fast.recv(), 30))
            fast_got.append(message)
            sent = float(message["message"].split(" ", 1)[0])
            latencies.append(time.time() - sent)

    total = 0
    try:
        reader = asyncio.create_task(read_fast(10**9))
        filler = base64.b64encode(os.urandom(1400)).decode()  # incompressible
        for _ in range(20):
            for job in jobs:
                await emit(job, JobState.running, message=f"{time.time()} {filler}")
                total += 1
            if await metric(notifier.http, "mxw_notifier_ws_dropped_clients_total") > (
                dropped_before
            ):
                break
        while len(fast_got) < total:
            await asyncio.sleep(0.05)
            assert not reader.done(), reader
        reader.cancel()
        assert await metric(notifier.http, "mxw_notifier_ws_dropped_clients_total") == (
            dropped_before + 1
        )
        # The fast client had every event, in order per job, promptly.
        for job in jobs:
            assert seqs(fast_got, job) == sorted(seqs(fast_got, job))
        assert len(fast_got) == total
        assert max(latencies) < 2.0, sorted(latencies)[-5:]
        # The slow one reads what its buffers held, then the close frame.
        slow_got, code = await drain(slow, timeout_s=10)
        assert code == 4408
        assert len(slow_got) < total
    finally:
        await fast.close()
        await slow.close()


async def test_a_peer_that_stops_answering_pings_is_disconnected(notifier, dev_issuer):
    """A raw client completes the handshake and then never answers a ping (ping interval and
    timeout are 1 s here): the server closes the connection."""
    before = await metric(notifier.http, "mxw_notifier_open_connections")
    reader, writer = await asyncio.open_connection("127.0.0.1", int(notifier.ws.rsplit(":", 1)[1]))
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    writer.write(
        (
            f"GET /ws/jobs?access_token={dev_issuer.mint('zombie')} HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    # Accepted first, then authorized (the token, the user's disabled flag), then counted.
    deadline = time.monotonic() + 5
    while await metric(notifier.http, "mxw_notifier_open_connections") != before + 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    started = time.monotonic()
    # Read (and so take the pings) but never answer: EOF once the server gives up.
    while await asyncio.wait_for(reader.read(4096), 10):
        pass
    assert time.monotonic() - started < 8
    writer.close()
    deadline = time.monotonic() + 5
    while await metric(notifier.http, "mxw_notifier_open_connections") != before:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


# ---- SSE ----


def sse_events(text: str) -> list[dict]:
    """Parse an event stream into its events (comments dropped)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")
        if fields:
            events.append(fields)
    return events


async def test_sse_streams_history_then_live_and_resumes_with_last_event_id(
    notifier, make_job, record, emit, dev_issuer
):
    job_id = await make_job("frank")
    await record(job_id, JobState.running, progress=0.1)
    token = dev_issuer.mint("frank")
    url = f"{notifier.http}/jobs/{job_id}/events"
    stream_headers = {"Accept": "text/event-stream", "Origin": "http://127.0.0.1:8000"}
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "GET", url, params={"access_token": token}, headers=stream_headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["access-control-allow-origin"] in ("*", "http://127.0.0.1:8000")
            text = ""
            emitted = False
            async for chunk in response.aiter_text():
                text += chunk
                if not emitted and '"seq": 1' in text:
                    emitted = True
                    await emit(job_id, JobState.running, progress=0.5)
                    await emit(job_id, JobState.done, stage=Stage.embed, progress=1.0)
        events = sse_events(text)
        assert events[0] == {"retry": "3000"}
        statuses = [e for e in events if "id" in e]
        assert [e["id"] for e in statuses] == ["1", "2", "3"]
        assert [json.loads(e["data"])["seq"] for e in statuses] == [1, 2, 3]
        assert events[-1]["event"] == "end"

        # EventSource reconnects with Last-Event-ID (and the header).
        resumed = await client.get(
            url, headers={**stream_headers, "Last-Event-ID": "1",
                          "Authorization": f"Bearer {token}"},
        )  # fmt: skip
        assert [e["id"] for e in sse_events(resumed.text) if "id" in e] == ["2", "3"]
        # Caught up on a finished job: 204 stops EventSource from reconnecting.
        done = await client.get(
            url, params={"access_token": token}, headers={**stream_headers, "Last-Event-ID": "3"}
        )
        assert done.status_code == 204
        # Without text/event-stream: the history as JSON.
        history = await client.get(
            url, params={"after": 1}, headers={"Authorization": f"Bearer {token}"}
        )
        assert history.json()["latest_seq"] == 3
        assert history.json()["finished"] is True
        assert seqs(history.json()["events"]) == [2, 3]
        # CORS preflight for a page on another origin.
        preflight = await client.options(
            url,
            headers={
                "Origin": "http://127.0.0.1:8000",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization,last-event-id",
            },
        )
        assert preflight.status_code == 200
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()


async def test_sse_auth_and_ownership(notifier, make_job, dev_issuer):
    job_id = await make_job("frank")
    url = f"{notifier.http}/jobs/{job_id}/events"
    sse = {"Accept": "text/event-stream"}
    async with httpx.AsyncClient(timeout=30) as client:
        anonymous = await client.get(url, headers=sse)
        expired = await client.get(
            url, headers=sse, params={"access_token": dev_issuer.mint("frank", ttl_s=-3600)}
        )
        foreign = await client.get(
            url, headers=sse, params={"access_token": dev_issuer.mint("bob")}
        )
        unknown = await client.get(
            f"{notifier.http}/jobs/{uuid.uuid4()}/events",
            headers=sse,
            params={"access_token": dev_issuer.mint("frank")},
        )
        bad_resume = await client.get(
            url, headers={**sse, "Last-Event-ID": "x"},
            params={"access_token": dev_issuer.mint("frank")},
        )  # fmt: skip
    for response, status in ((anonymous, 401), (expired, 401), (foreign, 404), (unknown, 404),
                             (bad_resume, 400)):  # fmt: skip
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    assert anonymous.headers["www-authenticate"] == "Bearer"


async def test_metrics_name_the_feeds(notifier):
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{notifier.http}/metrics")).text
    for name in (
        "mxw_notifier_open_connections",
        "mxw_notifier_ws_connections",
        "mxw_notifier_sse_connections",
        "mxw_notifier_ws_dropped_clients_total",
        "mxw_notifier_delivery_latency_seconds_bucket",
        "mxw_notifier_status_events_total",
    ):
        assert name in text, name


async def test_l2_a_sequence_number_beyond_the_seq_column_is_a_bad_request(
    notifier, make_job, record, dev_issuer
):
    """job_events.seq is an integer: a larger `after` (or Last-Event-ID, or resume position)
    is refused as bad input instead of failing in the database (500, WebSocket 1011)."""
    job_id = await make_job("lena")
    await record(job_id, JobState.running, progress=0.1)
    token = dev_issuer.mint("lena")
    for bad in (f"/ws/jobs/{job_id}?after=9999999999", f"/ws/jobs?resume={job_id}:2147483648"):
        async with connect(f"{notifier.ws}{bad}&access_token={token}") as ws:
            assert await drain(ws) == ([], 4400), bad
    url = f"{notifier.http}/jobs/{job_id}/events"
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for params, headers in (
            ({"after": "9999999999"}, auth),
            ({}, {**auth, "Last-Event-ID": "2147483648"}),
        ):
            response = await client.get(url, params=params, headers=headers)
            assert response.status_code == 400, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "2147483647" in response.json()["detail"]
        # The largest seq the column holds is still a valid position.
        response = await client.get(url, params={"after": "2147483647"}, headers=auth)
        assert response.status_code == 200, response.text
