"""Retention against real Postgres: old rows are pruned in batches, recent ones and what
unfinished work still needs are kept."""

import uuid

from mxw_shared.contracts import Stage
from mxw_shared.retention import (
    Pruner,
    job_events_task,
    processed_events_task,
    prune,
    stage_service_tasks,
    webhook_deliveries_task,
)
from mxw_shared.settings import CommonSettings

OLD, RECENT = "now() - interval '40 days'", "now() - interval '1 day'"


def settings(**overrides: object) -> CommonSettings:
    return CommonSettings(**overrides)


async def test_info_pruning_processed_events_of_its_own_consumer_only(db):
    me, other = f"svc-{uuid.uuid4().hex[:6]}", f"svc-{uuid.uuid4().hex[:6]}"
    for consumer, age, count in ((me, OLD, 5), (me, RECENT, 2), (other, OLD, 3)):
        await db.execute(
            "INSERT INTO processed_events (consumer, event_id, processed_at) "
            f"SELECT $1, $1 || '-' || $2 || '-' || n, {age} FROM generate_series(1, $3) n",
            consumer,
            age[-8:],
            count,
        )
    task = processed_events_task(settings(processed_events_retention_days=30), me)
    assert await prune(db, task, batch_rows=2) == 5  # three batches
    counts = dict(
        await db.fetch(
            "SELECT consumer, count(*) FROM processed_events WHERE consumer = ANY($1) "
            "GROUP BY consumer",
            [me, other],
        )
    )
    assert counts == {me: 2, other: 3}
    # 0 days keeps for ever.
    assert (
        await prune(
            db, processed_events_task(settings(processed_events_retention_days=0), other), 10
        )
        == 0
    )


async def add_events(db, job_id: uuid.UUID, events: list[tuple[str, str]]) -> None:
    for seq, (state, age) in enumerate(events, start=1):
        await db.execute(
            "INSERT INTO job_events (job_id, event_id, stage, state, progress, seq, created_at) "
            f"VALUES ($1, $2, 'embed', $3, 0.5, $4, {age})",
            job_id,
            f"{job_id}-{seq}",
            state,
            seq,
        )


async def test_info_pruning_job_events_of_long_finished_jobs_keeps_the_latest(db, make_job):
    finished_long_ago, unfinished, finished_recently = (
        await make_job("retention"),
        await make_job("retention"),
        await make_job("retention"),
    )
    await add_events(db, finished_long_ago, [("running", OLD), ("running", OLD), ("done", OLD)])
    await add_events(db, unfinished, [("running", OLD), ("running", OLD)])
    await add_events(db, finished_recently, [("running", OLD), ("failed", RECENT)])

    task = job_events_task(settings(job_events_retention_days=30))
    assert await prune(db, task, batch_rows=1000) >= 2
    left = {
        job_id: await db.fetchval(
            "SELECT array_agg(seq ORDER BY seq) FROM job_events WHERE job_id = $1", job_id
        )
        for job_id in (finished_long_ago, unfinished, finished_recently)
    }
    assert left == {finished_long_ago: [3], unfinished: [1, 2], finished_recently: [1, 2]}


async def test_info_pruning_finished_webhook_deliveries_with_their_attempts(db, make_job):
    endpoint = uuid.uuid4()
    await db.execute(
        "INSERT INTO webhook_endpoints (id, owner_id, url, event_types, secret) "
        "VALUES ($1, 'retention', 'https://example.com/', '{job.done}', 'whsec_eA==')",
        endpoint,
    )
    rows = {}
    for name, state, finished in (
        ("old-delivered", "delivered", OLD),
        ("old-failed", "failed", OLD),
        ("recent-delivered", "delivered", RECENT),
        ("old-pending", "pending", "NULL"),
    ):
        rows[name] = await db.fetchval(
            "INSERT INTO webhook_deliveries (endpoint_id, owner_id, msg_id, event_type, payload,"
            f" state, created_at, finished_at) VALUES ($1, 'retention', $2, 'job.done', '{{}}',"
            f" $3, {OLD}, {finished}) RETURNING id",
            endpoint,
            name,
            state,
        )
        await db.execute(
            "INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempt, outcome,"
            f" attempted_at) VALUES ($1, $2, 1, 'failed', {OLD})",
            rows[name],
            endpoint,
        )
    try:
        task = webhook_deliveries_task(settings(webhook_deliveries_retention_days=30))
        assert await prune(db, task, batch_rows=1) == 2
        kept = {
            r["msg_id"]
            for r in await db.fetch(
                "SELECT msg_id FROM webhook_deliveries WHERE endpoint_id = $1", endpoint
            )
        }
        assert kept == {"recent-delivered", "old-pending"}
        attempts = await db.fetchval(
            "SELECT count(*) FROM webhook_attempts WHERE endpoint_id = $1", endpoint
        )
        assert attempts == 2  # those of the kept deliveries
    finally:
        await db.execute("DELETE FROM webhook_endpoints WHERE id = $1", endpoint)


async def test_info_pruning_stage_sweeps_never_inside_the_sweep_window(db, make_job):
    job_id = await make_job("retention")
    for generation, age in ((1, OLD), (2, "now() - interval '3 days'"), (3, RECENT)):
        await db.execute(
            "INSERT INTO stage_sweeps (job_id, stage, generation, swept_at) "
            f"VALUES ($1, 'chunk', $2, {age})",
            job_id,
            generation,
        )
    # Retention 1 day, but the sweeper looks back 7 days: only the 40-day-old row goes.
    config = settings(
        service_name="chunker", stage_sweeps_retention_days=1, sweep_window_s=7 * 86400
    )
    deleted = await Pruner(db, config, stage_service_tasks(config, [Stage.chunk])).prune_once()
    assert deleted["stage_sweeps"] >= 1
    generations = await db.fetchval(
        "SELECT array_agg(generation ORDER BY generation) FROM stage_sweeps WHERE job_id = $1",
        job_id,
    )
    assert generations == [2, 3]
