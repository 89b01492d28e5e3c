"""Job and stage state in the database, and the job.status events that announce it.

A job's overall state is derived from its stage rows (each written by that stage's service)
and the job row (written by the gateway): there is one source of truth, so the job status a
client reads and the events it was sent cannot disagree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
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


def stage_overall_progress(stage: Stage, state: str, fraction: float) -> float:
    if state == JobState.done:
        return PIPELINE[stage].span[1]
    return overall_progress(stage, fraction)


def job_progress(state: JobState, stages: dict[Stage, tuple[str, float]]) -> float:
    """Overall 0..1 progress: the furthest point any stage row reached."""
    if state == JobState.done:
        return 1.0
    return max(
        (stage_overall_progress(s, st, frac) for s, (st, frac) in stages.items()), default=0.0
    )


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


def derive_job_state(cancelled: bool, stages: dict[Stage, str]) -> JobState:
    """Overall state from the job's stage rows: the one rule every reader uses (the same in
    SQL: `job_state_sql`). Every row belongs to the current run: a rerun removes the rows
    of the stages it does again (transitions.rerun)."""
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
    current = f"s.job_id = {job}.id"
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
