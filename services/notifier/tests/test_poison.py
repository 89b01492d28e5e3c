"""H3: malformed job.status records on the real broker stop neither the live feed nor the
webhook trigger. Each is dead-lettered to job.status.dlq with its reason (by the trigger,
the one reader the replicas share), and a good record behind it on the same partition is
still delivered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from mxw_shared import topics
from mxw_shared.contracts import Envelope, JobState, JobStatus, Stage
from mxw_shared.outbox import OutboxRelay
from websockets.asyncio.client import ClientConnection, connect


@pytest.fixture(scope="module")
async def notifier(start_notifier, infra, db):
    """A notifier, and an outbox relay standing in for the gateway's and the workers' (the
    notifier relays nothing itself): it publishes the dead letters the trigger writes."""
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers, acks="all")
    await producer.start()
    relay = OutboxRelay(db, producer, poll_interval_s=0.2)
    relaying = asyncio.create_task(relay.run())
    try:
        async with start_notifier() as running:
            yield running
    finally:
        await relay.stop()
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        await producer.stop()


async def recv(ws: ClientConnection, timeout_s: float = 30) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


def poison(job_id: uuid.UUID, owner: str) -> dict[str, tuple[list[tuple[str, bytes]], bytes]]:
    """One record of each malformed kind, all terminal-looking, for `job_id`."""
    event = JobStatus(
        job_id=job_id,
        owner_id=owner,
        stage=Stage.embed,
        state=JobState.done,
        progress=1.0,
        message="finished",
    )
    body = event.model_dump_json().encode()
    headers = {k: v.encode() for k, v in Envelope.for_event(event, "tests").to_headers().items()}

    def with_(**override: bytes) -> list[tuple[str, bytes]]:
        return list({**headers, **override}.items())

    return {
        "undecodable-header": (with_(ce_type=b"\xff\xfeio.mxwhisper"), body),
        "invalid-json": (with_(note=b"a\x00b"), b"{not json"),
        "nested-json": (with_(), b'{"job_id": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        "nul-in-ce-id": (with_(ce_id=b"id\x00x"), body),
        "nul-in-value": (with_(), body.replace(b'"finished"', b'"fini\\u0000shed"')),
        "oversize": (with_(), b'{"job_id": "' + b"x" * 900_000 + b'"}'),
    }


REASONS = {
    "undecodable-header": "does not belong on",
    "invalid-json": "Invalid JSON",
    "nested-json": "recursion limit",
    "nul-in-ce-id": "NUL",
    "nul-in-value": "NUL",
    "oversize": "MXW_MAX_EVENT_BYTES",
}


async def publish_poison(kafka_producer, job_id: uuid.UUID, owner: str) -> dict[str, str]:
    """Publish the poison under the job's key (the partition of its good events)."""
    probes = {}
    for name, (headers, value) in poison(job_id, owner).items():
        probe = f"{name}-{uuid.uuid4().hex[:8]}"
        probes[probe] = name
        await kafka_producer.send_and_wait(
            topics.JOB_STATUS,
            value=value,
            key=str(job_id).encode(),
            headers=[*headers, ("probe", probe.encode())],
        )
    return probes


async def assert_dead_lettered(read_probes, probes: dict[str, str]) -> None:
    found = await read_probes(topics.dlq(topics.JOB_STATUS), set(probes))
    assert {probes[p] for p in found} == set(probes.values())
    for probe, (headers, value, _) in found.items():
        name = probes[probe]
        assert REASONS[name] in headers["x_error"], (name, headers["x_error"])
        assert headers["x_error"].startswith("invalid event")
        assert headers["x_original_topic"] == topics.JOB_STATUS
        assert headers["x_consumer"] == "notifier-webhooks"
        assert "\x00" not in json.dumps(headers)
        if name == "oversize":
            assert len(value) == 65_536


async def test_h3_live_feed_skips_malformed_records_and_keeps_flowing(
    notifier, make_job, emit, dev_issuer, kafka_producer, read_probes
):
    job_id = await make_job("alice")
    url = f"{notifier.ws}/ws/jobs/{job_id}?access_token={dev_issuer.mint('alice')}"
    async with connect(url) as ws:
        first = await emit(job_id, JobState.running, progress=0.1)
        assert (await recv(ws))["event_id"] == first.id  # subscribed and live
        probes = await publish_poison(kafka_producer, job_id, "alice")
        good = await emit(job_id, JobState.running, stage=Stage.chunk, progress=0.85)
        got = await recv(ws)
    assert (got["event_id"], got["seq"]) == (good.id, 2)
    await assert_dead_lettered(read_probes, probes)


async def test_h3_webhook_trigger_dead_letters_malformed_records_and_keeps_flowing(
    notifier, db, make_job, emit, kafka_producer, wait_for, read_probes
):
    owner = f"hooked-{uuid.uuid4().hex[:8]}"
    await db.execute(
        "INSERT INTO webhook_endpoints (id, owner_id, url, event_types, secret)"
        " VALUES ($1, $2, 'https://127.0.0.1:9/mxw', '{job.done}', $3)",
        uuid.uuid4(),
        owner,
        "whsec_" + secrets.token_urlsafe(24),
    )
    job_id = await make_job(owner)
    probes = await publish_poison(kafka_producer, job_id, owner)
    good = await emit(job_id, JobState.done, stage=Stage.embed, progress=1.0)

    await wait_for(
        "SELECT count(*) FROM webhook_deliveries WHERE msg_id = $1",
        f"msg_{good.id}",
        predicate=lambda n: n == 1,
    )
    await assert_dead_lettered(read_probes, probes)
