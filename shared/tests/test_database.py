"""Migrations, the outbox relay and the stage bookkeeping on the real PostgreSQL + broker."""

import asyncio
import random
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from mxw_shared import topics
from mxw_shared.contracts import JobState, Stage
from mxw_shared.db import SchemaOutOfDate, check_schema, create_pool
from mxw_shared.jobs import (
    STAGE_ORDER,
    derive_job_state,
    job_state_sql,
    overall_progress,
    record_status,
)
from mxw_shared.migrate import migrate
from mxw_shared.migrations import latest_version, load_migrations
from mxw_shared.outbox import OutboxRelay


async def test_migrate_is_idempotent_and_schema_check_passes(infra, db):
    assert await migrate(infra.dsn) == []
    assert await check_schema(db) == latest_version()
    indexes = {r["indexname"] for r in await db.fetch("SELECT indexname FROM pg_indexes")}
    assert {"chunk_embeddings_hnsw", "chunks_tsv"} <= indexes
    method = await db.fetchval(
        "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
        "WHERE c.relname = 'chunk_embeddings_hnsw'"
    )
    assert method == "hnsw"
    definition = await db.fetchval("SELECT pg_get_indexdef('chunk_embeddings_hnsw'::regclass)")
    assert "ef_construction='128'" in definition, definition  # migration 7 (recall at 1M)


async def test_empty_database_is_refused_by_services(infra):
    conn = await asyncpg.connect(infra.dsn)
    name = f"empty_{uuid.uuid4().hex[:8]}"
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    pool = await create_pool(infra.dsn.rsplit("/", 1)[0] + f"/{name}")
    try:
        with pytest.raises(SchemaOutOfDate, match="migrate"):
            await check_schema(pool)
    finally:
        await pool.close()


async def test_changed_migration_file_is_detected(infra, db):
    first = load_migrations()[0]
    await db.execute(
        "UPDATE schema_migrations SET checksum = 'tampered' WHERE version = $1", first.version
    )
    try:
        with pytest.raises(RuntimeError, match="changed after it was applied"):
            await migrate(infra.dsn)
    finally:
        await db.execute(
            "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
            first.version,
            first.checksum,
        )


async def test_status_and_outbox_commit_together_or_not_at_all(db, make_job):
    job_id = await make_job()

    async def status_then_crash() -> None:
        async with db.acquire() as conn, conn.transaction():
            await record_status(
                conn,
                job_id=job_id,
                owner_id="alice",
                stage=Stage.transcribe,
                state=JobState.queued,
                progress=0,
                source="t",
            )
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        await status_then_crash()
    assert await db.fetchval("SELECT count(*) FROM job_events WHERE job_id = $1", job_id) == 0
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE key = $1", str(job_id)) == 0


async def test_relay_publishes_in_order_and_marks_sent(infra, db, make_job, read_topic):
    job_id = await make_job()
    async with db.acquire() as conn, conn.transaction():
        for i in range(5):
            await record_status(
                conn,
                job_id=job_id,
                owner_id="alice",
                stage=Stage.transcribe,
                state=JobState.running,
                progress=i / 10,
                source="t",
                message=f"step {i}",
            )
    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers, acks="all")
    await producer.start()
    relays = [OutboxRelay(db, producer, poll_interval_s=0.1) for _ in range(2)]  # two replicas
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        records = await read_topic(topics.JOB_STATUS, job_id, count=5)
    finally:
        for relay in relays:
            await relay.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
    assert [body["message"] for _, body in records] == [f"step {i}" for i in range(5)]
    history = await db.fetch(
        "SELECT event_id FROM job_events WHERE job_id = $1 ORDER BY id", job_id
    )
    assert [h["ce_id"] for h, _ in records] == [r["event_id"] for r in history]
    unsent = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE key = $1 AND sent_at IS NULL", str(job_id)
    )
    assert unsent == 0


async def test_job_state_is_derived_from_stage_rows(db, make_job):
    job_id = await make_job()
    async with db.acquire() as conn:
        await conn.execute(
            "INSERT INTO job_stages (job_id, stage, state, metrics) VALUES"
            " ($1, 'transcribe', 'done', '{\"rtf\": 0.1}'), ($1, 'chunk', 'failed', '{}')",
            job_id,
        )
        rows = await conn.fetch(
            "SELECT stage, state, metrics FROM job_stages WHERE job_id = $1", job_id
        )
    stages = {Stage(r["stage"]): r["state"] for r in rows}
    assert derive_job_state(False, stages) == JobState.failed
    assert derive_job_state(True, stages) == JobState.cancelled
    assert derive_job_state(False, {}) == JobState.queued
    assert derive_job_state(False, {Stage.embed: "done"}) == JobState.done
    assert {r["stage"]: r["metrics"] for r in rows}["transcribe"] == {"rtf": 0.1}


def test_overall_progress_spans_stages_in_order():
    from mxw_shared.stages import PIPELINE

    # Each stage's share starts where its prerequisites end (stages side by side share a
    # span), so progress never goes back along any path; the last stages end at 1.
    for spec in PIPELINE.specs:
        start = max((PIPELINE[p].span[1] for p in spec.after), default=0.0)
        assert overall_progress(spec.stage, 0.0) == start
        points = [overall_progress(spec.stage, f) for f in (0.0, 0.5, 1.0)]
        assert points == sorted(points)
    assert {overall_progress(s, 1.0) for s in PIPELINE.final} == {1.0}


async def test_replicas_relay_lanes_in_parallel_keeping_each_jobs_order(infra, db, make_job):
    from aiokafka import AIOKafkaConsumer
    from mxw_shared.outbox import LANES, enqueue_raw

    jobs = [str(await make_job()) for _ in range(16)]
    topic = f"relay-lanes-{uuid.uuid4().hex[:8]}"
    async with db.acquire() as conn, conn.transaction():
        for step in range(10):  # interleaved, as concurrent jobs write them
            for job in jobs:
                await enqueue_raw(conn, topic, job, {"step": str(step)}, f"{job}:{step}".encode())
    lanes = await db.fetchval(
        "SELECT count(DISTINCT hashtext(key) & $2) FROM outbox WHERE topic = $1", topic, LANES - 1
    )
    assert lanes > 1  # the jobs spread over several lanes

    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers, acks="all")
    await producer.start()
    relays = [OutboxRelay(db, producer, poll_interval_s=0.1, batch_size=7) for _ in range(3)]
    try:
        await asyncio.gather(*(relay.relay_once() for relay in relays))
        while await relays[0].relay_once():  # whatever the first round left
            pass
    finally:
        await producer.stop()
    assert not await db.fetchval(
        "SELECT count(*) FROM outbox WHERE topic = $1 AND sent_at IS NULL", topic
    )

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=infra.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    received: dict[str, list[int]] = {}
    try:
        total = 0
        async with asyncio.timeout(60):
            while total < len(jobs) * 10:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        job, step = record.value.decode().split(":")
                        received.setdefault(job, []).append(int(step))
                        total += 1
    finally:
        await consumer.stop()
    # Each job's events exactly once, in the order they were written.
    assert received == {job: list(range(10)) for job in jobs}


async def test_the_job_state_in_sql_is_the_python_rule(db, make_job):
    """job_state_sql (lists, filters, reuse) and derive_job_state (job views) agree on every
    sampled mix of stage rows (every row is the current run's: transitions.rerun removes
    the rows it redoes)."""
    draw = random.Random(19)  # fixed: the same sample on every machine and run
    states = [None, *JobState]
    expected: dict[uuid.UUID, JobState] = {}
    for n in range(150):
        job_id = await make_job()
        cancelled = draw.random() < 0.1
        await db.execute(
            "UPDATE jobs SET cancelled_at = CASE WHEN $2 THEN now() END WHERE id = $1",
            job_id,
            cancelled,
        )
        current: dict[Stage, str] = {}
        # Some jobs have no stage rows at all (queued: rare in random draws of 4 stages).
        for stage in STAGE_ORDER if n % 20 else ():
            state = draw.choice(states)
            if state is None:
                continue
            await db.execute(
                "INSERT INTO job_stages (job_id, stage, state) VALUES ($1, $2, $3)",
                job_id,
                stage.value,
                state.value,
            )
            current[stage] = state
        expected[job_id] = derive_job_state(cancelled, current)
    rows = await db.fetch(
        f"SELECT id, ({job_state_sql('jobs')}) AS state FROM jobs WHERE id = ANY($1::uuid[])",
        list(expected),
    )
    assert {r["id"]: JobState(r["state"]) for r in rows} == expected
    # The sample reaches every state, so the comparison covers each branch of the rule.
    assert set(expected.values()) == set(JobState)
