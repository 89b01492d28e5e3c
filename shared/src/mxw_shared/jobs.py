"""Job and stage state in the database, and the job.status events that announce it.

A job's overall state is derived from its stage rows (each written by that stage's service)
and the job row (written by the gateway): there is one source of truth, so the job status a
client reads and the events it was sent cannot disagree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mxw_shared.contracts import Envelope, JobState, JobStatus, Stage
from mxw_shared.db import Connection
from mxw_shared.locks import JOB_STATUS_SEQ as _STATUS_SEQ_LOCK
from mxw_shared.outbox import enqueue
from mxw_shared.stages import PIPELINE

STAGE_ORDER = PIPELINE.order


def overall_progress(stage: Stage, stage_fraction: float) -> float:
    lo, hi = PIPELINE[stage].span
    return round(lo + (hi - lo) * min(max(stage_fraction, 0.0), 1.0), 4)


@dataclass(frozen=True)
class JobRow:
    id: uuid.UUID
    owner_id: str
    cancelled: bool
    options: dict[str, Any]
    generation: int = 0


async def get_job(conn: Connection, job_id: uuid.UUID) -> JobRow | None:
    row = await conn.fetchrow(
        "SELECT id, owner_id, cancelled_at IS NOT NULL AS cancelled, options, generation "
        "FROM jobs WHERE id = $1",
        job_id,
    )
    if row is None:
        return None
    return JobRow(row["id"], row["owner_id"], row["cancelled"], row["options"], row["generation"])


async def record_status(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    owner_id: str,
    stage: Stage,
    state: JobState,
    progress: float,
    source: str,
    message: str | None = None,
    error: str | None = None,
) -> Envelope:
    """Append to the job's history and enqueue the matching job.status event, atomically
    with whatever else the caller's transaction does."""
    seq = await next_status_seq(conn, job_id)
    event = JobStatus(
        job_id=job_id,
        owner_id=owner_id,
        stage=stage,
        state=state,
        progress=progress,
        message=message,
        error=error[:4000] if error else None,
        seq=seq,
    )
    envelope = await enqueue(conn, event, source=source)
    await conn.execute(
        "INSERT INTO job_events (job_id, event_id, stage, state, progress, message, error, seq) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        job_id,
        envelope.id,
        stage.value,
        state.value,
        progress,
        message,
        event.error,
        seq,
    )
    return envelope


async def next_status_seq(conn: Connection, job_id: uuid.UUID) -> int:
    """The job's next status number. The per-job lock is held until the caller's transaction
    ends, so numbers follow commit order: whoever saw n has seen 1..n (notifier resume)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))", _STATUS_SEQ_LOCK, str(job_id)
    )
    seq: int = await conn.fetchval(
        "SELECT coalesce(max(seq), 0) + 1 FROM job_events WHERE job_id = $1", job_id
    )
    return seq


async def start_stage(
    conn: Connection,
    job_id: uuid.UUID,
    stage: Stage,
    worker: str,
    lease_s: float,
    generation: int = 0,
    queued_at: datetime | None = None,
) -> int:
    """Mark the stage running under this worker's lease for `generation` of the job;
    returns the attempt number within that generation. `queued_at` (when the event asking
    for the stage was written) is kept from the first attempt of a generation."""
    attempts = await conn.fetchval(
        """INSERT INTO job_stages (job_id, stage, state, attempts, lease_owner, lease_expires_at,
                                   started_at, error, progress, generation, queued_at)
           VALUES ($1, $2, 'running', 1, $3, now() + make_interval(secs => $4), now(), NULL, 0,
                   $5, coalesce($6, now()))
           ON CONFLICT (job_id, stage) DO UPDATE SET
               state = 'running',
               attempts = CASE WHEN job_stages.generation = $5
                               THEN job_stages.attempts + 1 ELSE 1 END,
               lease_owner = $3,
               lease_expires_at = now() + make_interval(secs => $4),
               started_at = CASE WHEN job_stages.generation = $5
                                 THEN coalesce(job_stages.started_at, now()) ELSE now() END,
               finished_at = NULL, error = NULL, progress = 0, generation = $5,
               queued_at = CASE WHEN job_stages.generation = $5
                                THEN job_stages.queued_at ELSE coalesce($6, now()) END
           RETURNING attempts""",
        job_id,
        stage.value,
        worker,
        lease_s,
        generation,
        queued_at,
    )
    return int(attempts)


async def extend_lease(
    conn: Connection, job_id: uuid.UUID, stage: Stage, worker: str, lease_s: float
) -> bool:
    result: str = await conn.execute(
        "UPDATE job_stages SET lease_expires_at = now() + make_interval(secs => $4) "
        "WHERE job_id = $1 AND stage = $2 AND lease_owner = $3 AND state = 'running'",
        job_id,
        stage.value,
        worker,
        lease_s,
    )
    return result.endswith(" 1")


async def set_stage_progress(
    conn: Connection, job_id: uuid.UUID, stage: Stage, fraction: float
) -> None:
    await conn.execute(
        "UPDATE job_stages SET progress = $3 WHERE job_id = $1 AND stage = $2",
        job_id,
        stage.value,
        min(max(fraction, 0.0), 1.0),
    )


async def finish_stage(
    conn: Connection,
    job_id: uuid.UUID,
    stage: Stage,
    state: JobState,
    *,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
    worker: str | None = None,
) -> bool:
    """Record the stage's end. With `worker`, only while that worker holds the stage (it
    is running under its lease): a worker whose lease another one took over cannot
    overwrite the newer attempt. Returns whether the stage row was written."""
    if worker is not None:
        result: str = await conn.execute(
            """UPDATE job_stages SET
                   state = $3,
                   progress = CASE WHEN $3 = 'done' THEN 1 ELSE progress END,
                   error = $4, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,
                   metrics = metrics || coalesce($5, '{}'::jsonb)
               WHERE job_id = $1 AND stage = $2 AND lease_owner = $6 AND state = 'running'""",
            job_id,
            stage.value,
            state.value,
            error,
            metrics,
            worker,
        )
        return result.endswith(" 1")
    await conn.execute(
        """INSERT INTO job_stages (job_id, stage, state, progress, error, finished_at, metrics,
                                   started_at)
           VALUES ($1, $2, $3, CASE WHEN $3 = 'done' THEN 1 ELSE 0 END, $4, now(),
                   coalesce($5, '{}'::jsonb), now())
           ON CONFLICT (job_id, stage) DO UPDATE SET
               state = $3,
               progress = CASE WHEN $3 = 'done' THEN 1 ELSE job_stages.progress END,
               error = $4, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,
               metrics = job_stages.metrics || coalesce($5, '{}'::jsonb)""",
        job_id,
        stage.value,
        state.value,
        error,
        metrics,
    )
    return True


async def fail_stage(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    owner_id: str,
    stage: Stage,
    reason: str,
    source: str,
    worker: str | None = None,
) -> bool:
    """The stage failed for good, with the reason for its owner to read: its row and the
    job's status in the caller's transaction. Every writer that fails a stage (the runner,
    the sweeper) calls this. With `worker`, only while that worker holds the stage's lease;
    returns whether the stage was failed."""
    if not await finish_stage(conn, job_id, stage, JobState.failed, error=reason, worker=worker):
        return False
    await record_status(
        conn,
        job_id=job_id,
        owner_id=owner_id,
        stage=stage,
        state=JobState.failed,
        progress=overall_progress(stage, 0.0),
        source=source,
        message=f"{stage.value} failed",
        error=reason,
    )
    return True


def is_stale(
    stage: Stage, row_generation: int, job_generation: int, rerun_from: Stage | None
) -> bool:
    """After a reprocess from stage S, the rows of S and the stages after it left from an
    older generation describe the previous run: they count as not started yet. (The same
    rule in SQL: `current_run_sql`.)"""
    if rerun_from is None or row_generation >= job_generation:
        return False
    return STAGE_ORDER.index(stage) >= STAGE_ORDER.index(rerun_from)


def current_run_sql(row: str, job: str) -> str:
    """SQL condition: the job_stages row `row` belongs to the current run of the jobs row
    `job` (is_stale's rule)."""
    order = PIPELINE.sql_order()
    return (
        f"({row}.generation >= {job}.generation OR {job}.rerun_from IS NULL"
        f" OR array_position({order}, {row}.stage) < array_position({order}, {job}.rerun_from))"
    )


def derive_job_state(cancelled: bool, stages: dict[Stage, str]) -> JobState:
    """Overall state from the current run's stage rows: the one rule every reader uses (the
    same in SQL: `job_state_sql`)."""
    if cancelled:
        return JobState.cancelled
    if any(s == JobState.failed for s in stages.values()):
        return JobState.failed
    if all(stages.get(stage) == JobState.done for stage in PIPELINE.final):
        return JobState.done
    if stages:
        return JobState.running
    return JobState.queued


def job_state_sql(job: str = "jobs") -> str:
    """SQL expression: derive_job_state for the jobs row `job`, so lists can filter on it."""
    current = f"s.job_id = {job}.id AND {current_run_sql('s', job)}"
    final_done = " AND ".join(
        f"EXISTS (SELECT 1 FROM job_stages s WHERE {current}"
        f" AND s.stage = '{stage.value}' AND s.state = 'done')"
        for stage in PIPELINE.final
    )
    return f"""CASE
    WHEN {job}.cancelled_at IS NOT NULL THEN 'cancelled'
    WHEN EXISTS (SELECT 1 FROM job_stages s WHERE {current} AND s.state = 'failed')
        THEN 'failed'
    WHEN {final_done} THEN 'done'
    WHEN EXISTS (SELECT 1 FROM job_stages s WHERE {current}) THEN 'running'
    ELSE 'queued' END"""
