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
    "unreadable": "a header name is not UTF-8",
}


PARTITION = 0  # every record of a test on one partition: the good one queues behind the bad


async def publish_poison(
    kafka_producer, publish_unreadable, job_id: uuid.UUID, owner: str
) -> dict[str, str]:
    """Publish the poison; returns {probe: kind}. The record aiokafka cannot parse (a header
    name that is not UTF-8) carries no probe: its dead letter is found by its offset."""
    offset = await publish_unreadable(topics.JOB_STATUS, PARTITION, b"{}")
    probes = {f"record at offset {offset} of partition {PARTITION}": "unreadable"}
    for name, (headers, value) in poison(job_id, owner).items():
        probe = f"{name}-{uuid.uuid4().hex[:8]}"
        probes[probe] = name
        await kafka_producer.send_and_wait(
            topics.JOB_STATUS,
            value=value,
            key=str(job_id).encode(),
            headers=[*headers, ("probe", probe.encode())],
            partition=PARTITION,
        )
    return probes


async def send_good(record, kafka_producer, job_id: uuid.UUID, state: JobState, **kw) -> Envelope:
    """Record a status the way the stages do and publish it on PARTITION, behind the poison."""
    envelope, event = await record(job_id, state, **kw)
    await kafka_producer.send_and_wait(
        topics.JOB_STATUS,
        value=event.model_dump_json().encode(),
        key=str(job_id).encode(),
        headers=[(k, v.encode()) for k, v in envelope.to_headers().items()],
        partition=PARTITION,
    )
    return envelope


def probe_of(headers: dict[str, str]) -> str | None:
    if "probe" in headers:
        return headers["probe"]
    # The unreadable record's dead letter: "invalid event: record at offset N of partition P …"
    return headers.get("x_error", "").removeprefix("invalid event: ").split(" cannot be read")[0]


async def assert_dead_lettered(read_probes, probes: dict[str, str]) -> None:
    found = await read_probes(topics.dlq(topics.JOB_STATUS), set(probes), probe_of=probe_of)
    assert {probes[p] for p in found} == set(probes.values())
    for probe, (headers, value, _) in found.items():
        name = probes[probe]
        assert REASONS[name] in headers["x_error"], (name, headers["x_error"])
        assert headers["x_error"].startswith("invalid event")
        assert headers["x_original_topic"] == topics.JOB_STATUS
        assert headers["x_consumer"].startswith("notifier-webhooks-")  # the trigger's group
        assert "\x00" not in json.dumps(headers)
        if name == "oversize":
            assert len(value) == 65_536


async def test_h3_live_feed_skips_malformed_records_and_keeps_flowing(
    notifier, make_job, record, dev_issuer, kafka_producer, publish_unreadable, read_probes
):
    job_id = await make_job("alice")
    url = f"{notifier.ws}/ws/jobs/{job_id}?access_token={dev_issuer.mint('alice')}"
    async with connect(url) as ws:
        first = await send_good(record, kafka_producer, job_id, JobState.running, progress=0.1)
        assert (await recv(ws))["event_id"] == first.id  # subscribed and live
        probes = await publish_poison(kafka_producer, publish_unreadable, job_id, "alice")
        good = await send_good(
            record, kafka_producer, job_id, JobState.running, stage=Stage.chunk, progress=0.85
        )
        got = await recv(ws)
    assert (got["event_id"], got["seq"]) == (good.id, 2)
    await assert_dead_lettered(read_probes, probes)


async def test_h3_good_records_in_the_unreadable_ones_batch_are_delivered(
    notifier, make_job, record, dev_issuer, kafka_producer, publish_unreadable, read_probes
):
    """aiokafka parses a fetch record by record and, when one fails, drops the records it
    had parsed before it: a good record in front of the unreadable one in its batch (so
    always in the same fetch) is delivered once, and the feed gets past both."""
    job_id = await make_job("alice")
    url = f"{notifier.ws}/ws/jobs/{job_id}?access_token={dev_issuer.mint('alice')}"
    async with connect(url) as ws:
        first = await send_good(record, kafka_producer, job_id, JobState.running, progress=0.1)
        assert (await recv(ws))["event_id"] == first.id  # subscribed and live
        envelope, event = await record(job_id, JobState.running, stage=Stage.chunk, progress=0.5)
        headers = [(k, v.encode()) for k, v in envelope.to_headers().items()]
        offset = await publish_unreadable(
            topics.JOB_STATUS,
            PARTITION,
            b"{}",
            before=((event.model_dump_json().encode(), headers),),
        )
        good = await send_good(
            record, kafka_producer, job_id, JobState.running, stage=Stage.chunk, progress=0.85
        )
        got = [await recv(ws), await recv(ws)]
    assert [(g["event_id"], g["seq"]) for g in got] == [(envelope.id, 2), (good.id, 3)]
    await assert_dead_lettered(
        read_probes, {f"record at offset {offset} of partition {PARTITION}": "unreadable"}
    )


async def test_h3_webhook_trigger_dead_letters_malformed_records_and_keeps_flowing(
    notifier, db, make_job, record, kafka_producer, publish_unreadable, wait_for, read_probes
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
    probes = await publish_poison(kafka_producer, publish_unreadable, job_id, owner)
    good = await send_good(
        record, kafka_producer, job_id, JobState.done, stage=Stage.embed, progress=1.0
    )

    await wait_for(
        "SELECT count(*) FROM webhook_deliveries WHERE msg_id = $1",
        f"msg_{good.id}",
        predicate=lambda n: n == 1,
    )
    await assert_dead_lettered(read_probes, probes)
