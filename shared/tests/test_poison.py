"""Poison records and repeated errors on a real stage consumer (ServiceRuntime + StageRunner,
real broker, real database): every bad record is dead-lettered with its reason and the
partition keeps flowing (H3); an error that is no outage ends in the DLQ after
`max_handler_attempts` with the job failed (H3); a worker whose lease was taken over cannot
overwrite the newer attempt (L4)."""

from __future__ import annotations

import base64
import json
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from mxw_shared import topics, transitions
from mxw_shared.contracts import ChunksReady, Envelope, Stage, TranscriptReady
from mxw_shared.jobs import get_job
from mxw_shared.pipeline import PermanentError, StageOutcome, StageRunner
from mxw_shared.service import ServiceRuntime
from mxw_shared.settings import CommonSettings

PARTITION = 0  # every record of a test on one partition: the good one queues behind the bad


class Work:
    """The stage's work: chunks nothing; persisting fails for the jobs in `persist_fails`
    (a deterministic error, as NUL in an LLM title would be), and counts calls per job."""

    def __init__(self) -> None:
        self.persist_fails: set[uuid.UUID] = set()
        self.calls: dict[uuid.UUID, int] = {}

    async def __call__(self, envelope, event, job, progress):  # type: ignore[no-untyped-def]
        self.calls[job.id] = self.calls.get(job.id, 0) + 1

        async def persist(conn):  # type: ignore[no-untyped-def]
            if job.id in self.persist_fails:
                raise ValueError("title is not storable")

        return StageOutcome(
            persist=persist,
            next_event=ChunksReady(job_id=job.id, owner_id=job.owner_id, chunk_count=0, method="t"),
            message="chunked",
        )


async def start_at_end(bootstrap: str, group_id: str, topic: str) -> None:
    """Commit the group's offsets at the end of `topic`: the stage sees only this module's
    records, not those other test modules left on the shared broker."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
        await consumer.seek_to_end()
        await consumer.commit({tp: await consumer.position(tp) for tp in consumer.assignment()})
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
async def stage(infra):
    service = f"poison-{uuid.uuid4().hex[:6]}"
    settings = infra.settings(
        CommonSettings, service, sweep_interval_s=0, max_handler_attempts=3, max_attempts=1
    )
    group_id = f"{service}-group"
    await start_at_end(infra.bootstrap_servers, group_id, topics.TRANSCRIPT_READY)
    runtime = ServiceRuntime(settings)
    await runtime.start_storage()
    work = Work()
    runner = StageRunner(
        pool=runtime.pool,
        settings=settings,
        stage=Stage.chunk,
        work=work,
    )
    consumer = runtime.subscribe_stage(runner, group_id)
    await runtime.start_messaging()
    try:
        yield work, consumer
    finally:
        await runtime.stop()


def ready(job_id: uuid.UUID, owner: str = "alice") -> TranscriptReady:
    return TranscriptReady(
        job_id=job_id, owner_id=owner, segment_count=0, duration_s=1.0, model="tiny.en"
    )


def ce_headers(event: TranscriptReady, **override: bytes) -> list[tuple[str, bytes]]:
    headers = {k: v.encode() for k, v in Envelope.for_event(event, "tests").to_headers().items()}
    return list({**headers, **override}.items())


async def stage_state(db, job_id: uuid.UUID) -> str | None:
    return await db.fetchval(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", job_id
    )


async def test_h3_poison_records_are_dead_lettered_and_the_partition_keeps_flowing(
    stage, db, make_job, kafka_producer, wait_for, read_probes
):
    job_id = await make_job()
    event = ready(job_id)
    body = event.model_dump_json().encode()
    nested = b'{"job_id": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # RecursionError in json
    nul_value = body.replace(b'"alice"', b'"ali\\u0000ce"')
    oversize = b'{"job_id": "' + b"x" * 900_000 + b'"}'  # near Kafka's 1 MiB record limit
    cases: dict[str, tuple[list[tuple[str, bytes]], bytes, bytes | None, str]] = {
        "undecodable-header": (
            ce_headers(event, ce_type=b"\xff\xfeio.mxwhisper"),
            body,
            str(job_id).encode(),
            "does not belong on",
        ),
        "invalid-json": (
            ce_headers(event, note=b"a\x00b"),  # NUL in a header the DLQ copies
            b"{not json",
            str(job_id).encode(),
            "Invalid JSON",
        ),
        "nested-json": (ce_headers(event), nested, None, "recursion limit"),
        "nul-in-ce-id": (ce_headers(event, ce_id=b"id\x00x"), body, b"key\x00", "NUL"),
        "nul-in-value": (ce_headers(event), nul_value, str(job_id).encode(), "NUL"),
        "oversize": (ce_headers(event), oversize, str(job_id).encode(), "MXW_MAX_EVENT_BYTES"),
    }
    probes = {}
    for name, (headers, value, key, _) in cases.items():
        probe = f"{name}-{uuid.uuid4().hex[:8]}"
        probes[probe] = name
        await kafka_producer.send_and_wait(
            topics.TRANSCRIPT_READY,
            value=value,
            key=key,
            headers=[*headers, ("probe", probe.encode())],
            partition=PARTITION,
        )
    good = await make_job()
    await kafka_producer.send_and_wait(
        topics.TRANSCRIPT_READY,
        value=ready(good).model_dump_json().encode(),
        key=str(good).encode(),
        headers=ce_headers(ready(good)),
        partition=PARTITION,
    )

    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
        good,
        predicate=lambda s: s == "done",
    )
    found = await read_probes(topics.dlq(topics.TRANSCRIPT_READY), set(probes))
    assert {probes[p] for p in found} == set(cases)
    for probe, (headers, value, key) in found.items():
        name = probes[probe]
        assert cases[name][3] in headers["x_error"], (name, headers["x_error"])
        assert headers["x_original_topic"] == topics.TRANSCRIPT_READY
        assert headers["x_attempts"] == "0"
        assert "\x00" not in json.dumps(headers)
        if name == "undecodable-header":  # kept, as base64 of the original bytes
            assert base64.b64decode(headers["ce_type"].removeprefix("base64:")).startswith(
                b"\xff\xfe"
            )
        if name == "invalid-json":
            assert base64.b64decode(headers["note"].removeprefix("base64:")) == b"a\x00b"
            assert value == b"{not json"
        if name == "nul-in-ce-id":
            assert headers["ce_id"].startswith("base64:")
            assert key == b"key"
        if name == "nested-json":
            assert key == b"unknown"
        if name == "oversize":  # cut, so the dead letter itself stays publishable
            assert len(value) == 65_536
            assert headers["x_body_bytes"] == str(len(oversize))
    assert await stage_state(db, job_id) is None  # no bad record touched the job


async def test_h3_record_the_client_cannot_parse_is_skipped_and_dead_lettered(
    stage, make_job, kafka_producer, wait_for, read_probes, publish_unreadable
):
    """A header *name* that is not UTF-8 makes aiokafka itself fail on every fetch."""
    offset = await publish_unreadable(topics.TRANSCRIPT_READY, PARTITION, b"{}")
    good = await make_job()
    await kafka_producer.send_and_wait(
        topics.TRANSCRIPT_READY,
        value=ready(good).model_dump_json().encode(),
        key=str(good).encode(),
        headers=ce_headers(ready(good)),
        partition=PARTITION,
    )

    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
        good,
        predicate=lambda s: s == "done",
    )
    marker = f"record at offset {offset} of partition {PARTITION} cannot be read"
    found = await read_probes(
        topics.dlq(topics.TRANSCRIPT_READY),
        {marker},
        probe_of=lambda h: marker if marker in h.get("x_error", "") else None,
    )
    ((headers, _, _),) = found.values()
    assert "header name is not UTF-8" in headers["x_error"]


async def test_h3_deterministic_handler_error_is_dead_lettered_after_n_attempts(
    stage, db, make_job, kafka_producer, wait_for, read_probes
):
    work, consumer = stage
    job_id = await make_job()
    work.persist_fails.add(job_id)
    probe = f"persist-{uuid.uuid4().hex[:8]}"
    await kafka_producer.send_and_wait(
        topics.TRANSCRIPT_READY,
        value=ready(job_id).model_dump_json().encode(),
        key=str(job_id).encode(),
        headers=[*ce_headers(ready(job_id)), ("probe", probe.encode())],
        partition=PARTITION,
    )
    good = await make_job()
    await kafka_producer.send_and_wait(
        topics.TRANSCRIPT_READY,
        value=ready(good).model_dump_json().encode(),
        key=str(good).encode(),
        headers=ce_headers(ready(good)),
        partition=PARTITION,
    )

    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
        good,
        predicate=lambda s: s == "done",
    )
    error = await db.fetchval(
        "SELECT error FROM job_stages WHERE job_id = $1 AND stage = 'chunk' AND state = 'failed'",
        job_id,
    )
    assert error is not None
    assert "chunk failed 3 times" in error
    assert "title is not storable" in error
    assert work.calls[job_id] == consumer.settings.max_handler_attempts == 3
    failed = await db.fetchval(
        "SELECT error FROM job_events WHERE job_id = $1 AND state = 'failed'", job_id
    )
    assert failed == error  # the job's readable reason, announced on job.status
    ((headers, _, _),) = (await read_probes(topics.dlq(topics.TRANSCRIPT_READY), {probe})).values()
    assert headers["x_attempts"] == "3"
    assert "title is not storable" in headers["x_error"]


def lease_runner(db, infra, take_over: str) -> StageRunner[TranscriptReady]:
    """A runner whose work, while it runs, loses the stage to another worker (its lease
    lapsed and the work was sent again); then it succeeds, or fails for good."""

    async def work(envelope, event, job, progress):  # type: ignore[no-untyped-def]
        await db.execute(
            "UPDATE job_stages SET lease_owner = 'newer-worker',"
            " lease_expires_at = now() + interval '1 minute'"
            " WHERE job_id = $1 AND stage = 'chunk'",
            job.id,
        )
        if take_over == "fail":
            raise PermanentError("audio could not be decoded")

        async def persist(conn):  # type: ignore[no-untyped-def]
            await conn.execute("UPDATE jobs SET filename = 'stale' WHERE id = $1", job.id)

        return StageOutcome(
            persist=persist,
            next_event=ChunksReady(job_id=job.id, owner_id=job.owner_id, chunk_count=0, method="t"),
            message="chunked",
        )

    return StageRunner(
        pool=db,
        settings=infra.settings(CommonSettings, f"l4-{uuid.uuid4().hex[:6]}", max_attempts=1),
        stage=Stage.chunk,
        work=work,
    )


@pytest.mark.parametrize("outcome", ["done", "fail"])
async def test_l4_worker_whose_lease_was_taken_cannot_finish_the_stage(
    db, infra, make_job, outcome
):
    job_id = await make_job()
    event = ready(job_id)
    runner = lease_runner(db, infra, outcome)
    headers = Envelope.for_event(event, "tests").to_headers()

    assert await runner.handle(headers, event.model_dump_json().encode()) == "lease-lost"

    row = await db.fetchrow(
        "SELECT state, lease_owner, error FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
        job_id,
    )
    assert (row["state"], row["lease_owner"], row["error"]) == ("running", "newer-worker", None)
    assert await db.fetchval("SELECT filename FROM jobs WHERE id = $1", job_id) == "test.wav"
    written = await db.fetch(
        "SELECT topic FROM outbox WHERE key = $1 AND topic <> 'job.status'", str(job_id)
    )
    assert written == []  # no chunks.ready, no dead letter
    states = await db.fetch("SELECT state FROM job_events WHERE job_id = $1", job_id)
    assert [r["state"] for r in states] == ["running"]  # "started"; no failed, no done


async def test_l4_finish_stage_is_conditioned_on_the_lease_owner(db, make_job):
    job_id = await make_job()
    async with db.acquire() as conn:
        job = await get_job(conn, job_id)
        assert job is not None
        for worker in ("old-worker", "new-worker"):  # the new one took it over
            await transitions.start(
                conn, job, Stage.chunk, worker=worker, lease_s=60.0, generation=0, source="t"
            )
        fail = {"job_id": job_id, "owner_id": job.owner_id, "stage": Stage.chunk, "source": "t"}
        assert not await transitions.fail(conn, **fail, reason="stale", worker="old-worker")
        assert await stage_state(db, job_id) == "running"
        assert await transitions.fail(conn, **fail, reason="real", worker="new-worker")
    assert await stage_state(db, job_id) == "failed"


async def test_h3_handler_error_from_an_outage_is_not_counted(db):
    from mxw_shared.deadletter import FailureCounter, is_outage

    assert is_outage(ConnectionRefusedError())
    assert is_outage(TimeoutError())
    assert not is_outage(ValueError("title is not storable"))
    assert not is_outage(RecursionError())
    with pytest.raises(asyncpg.PostgresError) as raised:  # NUL reached SQL: the record's fault
        await db.execute("SELECT $1::text", "a\x00b")
    assert not is_outage(raised.value)
    counter = FailureCounter()
    assert [counter.failed("p0", 7) for _ in range(3)] == [1, 2, 3]
    assert counter.failed("p0", 8) == 1  # another record: counted afresh
