"""The transitions of a job and its stages: every writer of stage rows and of a job's
lifecycle calls these, in its own transaction (the stage runner, the sweeper, the
transcriber's partial writes, the gateway's cancel, reprocess and delete, the admin's
dead-letter replay).

    queued ──start──▶ running ──complete──▶ done
                        │  ▲ checkpoint, extend_lease
                        ├──fail──▶ failed (+ dead letter)
                        └──stop_cancelled──▶ cancelled
    a stage input lost or its worker gone ──requeue──▶ queued again
    a job ──cancel──▶ cancelled;  a finished job ──rerun(from)──▶ the later stages anew

Each writes the stage row, the job's status history and its job.status event (and the next
input, through the outbox) in the caller's transaction, so a state and its announcement never
disagree. A stage's end is written only while the calling worker holds its lease.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg

from mxw_shared.contracts import DeadLetter, EventData, JobOptions, JobState, Stage
from mxw_shared.db import Connection
from mxw_shared.deadletter import dead_letter
from mxw_shared.jobs import (
    JobRow,
    derive_job_state,
    job_progress,
    overall_progress,
    record_status,
)
from mxw_shared.outbox import enqueue, enqueue_raw
from mxw_shared.stage_inputs import rebuild_stage_input
from mxw_shared.stages import PIPELINE, Pipeline

FINISHED = (JobState.done, JobState.failed, JobState.cancelled)


class TransitionRefused(Exception):
    """The job is in no state for this transition (HTTP 409 at the gateway)."""

    def __init__(self, title: str, detail: str, state: JobState | None = None) -> None:
        super().__init__(detail)
        self.title = title
        self.detail = detail
        self.state = state


class JobNotFound(Exception):
    pass


async def _announce(
    conn: Connection,
    job_id: uuid.UUID,
    owner_id: str,
    stage: Stage,
    state: JobState,
    stage_fraction: float,
    *,
    source: str,
    message: str | None,
    error: str | None = None,
) -> None:
    """The job's status line for a transition of `stage` (history + job.status)."""
    await record_status(
        conn,
        job_id=job_id,
        owner_id=owner_id,
        stage=stage,
        state=state,
        progress=overall_progress(stage, stage_fraction),
        source=source,
        message=message,
        error=error,
    )


# ---- a stage's run, by the worker that holds it ----


async def start(
    conn: Connection,
    job: JobRow,
    stage: Stage,
    *,
    worker: str,
    lease_s: float,
    generation: int,
    source: str,
    queued_at: datetime | None = None,
    pipeline: Pipeline = PIPELINE,
) -> int:
    """Mark the stage running under `worker`'s lease for `generation` of the job and say
    so; returns the attempt number within that generation. `queued_at` (when the event
    asking for the stage was written) is kept from the first attempt of a generation."""
    attempts = int(
        await conn.fetchval(
            """INSERT INTO job_stages (job_id, stage, state, attempts, lease_owner,
                   lease_expires_at, started_at, error, progress, generation, queued_at)
               VALUES ($1, $2, 'running', 1, $3, now() + make_interval(secs => $4), now(),
                       NULL, 0, $5, coalesce($6, now()))
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
            job.id,
            stage.value,
            worker,
            lease_s,
            generation,
            queued_at,
        )
    )
    await _announce(
        conn,
        job.id,
        job.owner_id,
        stage,
        JobState.running,
        0.0,
        source=source,
        message=f"{stage.value} started (attempt {attempts})",
    )
    await skip_not_requested(conn, job, generation, pipeline)
    return attempts


# What marks the row of a stage a job did not ask for (its metrics), and the SQL that keeps
# such rows out of what measures the stages that ran (timing).
NOT_REQUESTED = {"requested": False}


def ran_sql(alias: str) -> str:
    """SQL: the job_stages row `alias` is of a stage that ran (not one skipped as not
    asked for)."""
    return f"NOT ({alias}.metrics @> '{json.dumps(NOT_REQUESTED)}'::jsonb)"


async def skip_not_requested(
    conn: Connection, job: JobRow, generation: int, pipeline: Pipeline
) -> None:
    """The stages the job's options do not ask for are done from the start of its run, so
    the stages after them never wait (a job without speakers needs no diarizer)."""
    skipped = pipeline.not_requested(JobOptions.model_validate(job.options or {}))
    if not skipped:
        return
    await conn.execute(
        """INSERT INTO job_stages (job_id, stage, state, progress, generation, started_at,
                                   finished_at, metrics)
           SELECT $1, stage, 'done', 1, $3, now(), now(), $4::jsonb
           FROM unnest($2::text[]) AS stage
           ON CONFLICT (job_id, stage) DO NOTHING""",
        job.id,
        [s.value for s in skipped],
        generation,
        NOT_REQUESTED,
    )


async def extend_lease(
    conn: Connection, job_id: uuid.UUID, stage: Stage, worker: str, lease_s: float
) -> bool:
    """The worker's heartbeat: whether it still holds the stage."""
    result: str = await conn.execute(
        "UPDATE job_stages SET lease_expires_at = now() + make_interval(secs => $4) "
        "WHERE job_id = $1 AND stage = $2 AND lease_owner = $3 AND state = 'running'",
        job_id,
        stage.value,
        worker,
        lease_s,
    )
    return result.endswith(" 1")


async def release_lease(
    conn: Connection, job_id: uuid.UUID, stage: Stage, worker: str, expires_in_s: float
) -> None:
    """A worker shutting down mid-stage gives it up: no owner, so whoever gets the record
    again takes over at once. The expiry stays ahead, so the sweeper re-sends only if that
    redelivery never comes."""
    await conn.execute(
        "UPDATE job_stages SET lease_owner = NULL,"
        " lease_expires_at = now() + make_interval(secs => $4)"
        " WHERE job_id = $1 AND stage = $2 AND lease_owner = $3 AND state = 'running'",
        job_id,
        stage.value,
        worker,
        expires_in_s,
    )


async def report_progress(
    conn: Connection,
    job: JobRow,
    stage: Stage,
    fraction: float,
    *,
    source: str,
    message: str | None,
) -> bool:
    """The stage's progress and its job.status; False (nothing written) once the job was
    cancelled, for the work to stop."""
    if await conn.fetchval("SELECT cancelled_at IS NOT NULL FROM jobs WHERE id = $1", job.id):
        return False
    fraction = min(max(fraction, 0.0), 1.0)
    await conn.execute(
        "UPDATE job_stages SET progress = $3 WHERE job_id = $1 AND stage = $2",
        job.id,
        stage.value,
        fraction,
    )
    await _announce(
        conn,
        job.id,
        job.owner_id,
        stage,
        JobState.running,
        fraction,
        source=source,
        message=message,
    )
    return True


class Hold(StrEnum):
    """Whether a worker may still write a stage's results."""

    held = "held"
    cancelled = "cancelled"  # the job was cancelled: stop
    lost = "lost"  # another worker took the stage over: this one's results are dropped


async def hold(conn: Connection, job_id: uuid.UUID, stage: Stage, worker: str) -> Hold:
    """Lock the stage's row for the caller's transaction and tell whether `worker` holds
    it. Until that transaction ends, no other worker can take the stage over, so what the
    caller writes under `Hold.held` belongs to the attempt that holds the lease."""
    row = await conn.fetchrow(
        "SELECT s.lease_owner, s.state, j.cancelled_at IS NOT NULL AS cancelled"
        " FROM job_stages s JOIN jobs j ON j.id = s.job_id"
        " WHERE s.job_id = $1 AND s.stage = $2 FOR UPDATE OF s",
        job_id,
        stage.value,
    )
    if row is None or row["lease_owner"] != worker or row["state"] != JobState.running:
        return Hold.lost
    return Hold.cancelled if row["cancelled"] else Hold.held


async def checkpoint(
    conn: Connection,
    job_id: uuid.UUID,
    stage: Stage,
    worker: str,
    write: Callable[[Connection], Awaitable[None]],
) -> Hold:
    """A partial result of a running stage (the transcriber's segments so far and its
    resume point): written by `write` only while `worker` holds the stage."""
    held = await hold(conn, job_id, stage, worker)
    if held is Hold.held:
        await write(conn)
    return held


class Completion(StrEnum):
    done = "done"
    already_finished = "already-finished"  # another attempt finished the same run first
    lease_lost = "lease-lost"


async def complete(
    conn: Connection,
    job: JobRow,
    stage: Stage,
    *,
    persist: Callable[[Connection], Awaitable[None]],
    next_event: EventData | None,
    message: str,
    metrics: dict[str, Any],
    worker: str,
    generation: int,
    source: str,
    traceparent: str | None = None,
    pipeline: Pipeline = PIPELINE,
) -> Completion:
    """The stage is done: its rows (`persist`), its state, the next stage's input, the
    inputs of the joins it completes and the job's status, all while `worker` holds it."""
    row = await conn.fetchrow(
        "SELECT state, generation, lease_owner FROM job_stages "
        "WHERE job_id = $1 AND stage = $2 FOR UPDATE",
        job.id,
        stage.value,
    )
    if row is not None and row["state"] == JobState.done and row["generation"] >= generation:
        return Completion.already_finished
    if row is None or row["lease_owner"] != worker:
        return Completion.lease_lost
    await persist(conn)
    await _finish(conn, job.id, stage, JobState.done, metrics=metrics, worker=worker)
    if next_event is not None:
        # The next stage works for the same run of the job.
        event = next_event.model_copy(update={"generation": generation})
        await enqueue(conn, event, source=source, traceparent=traceparent)
    await _send_joins(conn, job, stage, generation, source, traceparent, pipeline)
    last = await _ends_the_job(conn, job, stage, generation, pipeline)
    await _announce(
        conn,
        job.id,
        job.owner_id,
        stage,
        JobState.done if last else JobState.running,
        1.0,
        source=source,
        message=message,
    )
    return Completion.done


async def not_done(
    conn: Connection, job: JobRow, stages: tuple[Stage, ...], pipeline: Pipeline = PIPELINE
) -> tuple[Stage, ...]:
    """Those of `stages` not done in the job's current run. A stage the job's options do not
    ask for counts as done (it is marked so when the run starts: `skip_not_requested`)."""
    skipped = pipeline.not_requested(JobOptions.model_validate(job.options or {}))
    stages = tuple(s for s in stages if s not in skipped)
    if not stages:
        return ()
    done = await conn.fetch(
        "SELECT stage FROM job_stages WHERE job_id = $1 AND stage = ANY($2::text[])"
        " AND state = 'done'",
        job.id,
        [s.value for s in stages],
    )
    found = {r["stage"] for r in done}
    return tuple(s for s in stages if s.value not in found)


async def _send_joins(
    conn: Connection,
    job: JobRow,
    stage: Stage,
    generation: int,
    source: str,
    traceparent: str | None,
    pipeline: Pipeline,
) -> None:
    """A join is decided here, in the transaction that completes `stage`: each stage that
    waits for it gets its input once all its prerequisites are done. The job row is locked
    first, so that two prerequisites completing at once see each other."""
    joins = pipeline.joins_completed_by(stage)
    if not joins:
        return
    await conn.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
    for spec in joins:
        if await not_done(conn, job, spec.after, pipeline):
            continue
        event = await rebuild_stage_input(
            conn, job.id, spec.stage, generation=generation, pipeline=pipeline
        )
        if event is not None:
            await enqueue(conn, event, source=source, traceparent=traceparent)


async def _ends_the_job(
    conn: Connection, job: JobRow, stage: Stage, generation: int, pipeline: Pipeline
) -> bool:
    """Whether `stage`, just done, was the last of the run's final stages."""
    if not pipeline.is_final(stage):
        return False
    others = tuple(s for s in pipeline.final if s != stage)
    return not await not_done(conn, job, others, pipeline)


@dataclass(frozen=True)
class Letter:
    """The record a failed stage dead-letters (contracts.DeadLetter says its headers)."""

    topic: str
    headers: object
    body: bytes
    key: bytes | str | None
    consumer: str
    attempts: int
    max_body_bytes: int


async def fail(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    owner_id: str,
    stage: Stage,
    reason: str,
    source: str,
    worker: str | None = None,
    letter: Letter | None = None,
) -> bool:
    """The stage failed for good, with the reason for its owner to read: its row, the job's
    status and the dead letter of `letter` (an admin can replay it). With `worker`, only
    while that worker holds the stage; returns whether the stage was failed."""
    if not await _finish(conn, job_id, stage, JobState.failed, error=reason, worker=worker):
        return False
    await _announce(
        conn,
        job_id,
        owner_id,
        stage,
        JobState.failed,
        0.0,
        source=source,
        message=f"{stage.value} failed",
        error=reason,
    )
    if letter is not None:
        await dead_letter(
            conn,
            topic=letter.topic,
            raw_headers=letter.headers,
            body=letter.body,
            key=letter.key,
            reason=reason,
            consumer=letter.consumer,
            attempts=letter.attempts,
            max_body_bytes=letter.max_body_bytes,
        )
    return True


async def stop_cancelled(
    conn: Connection, job: JobRow, stage: Stage, *, worker: str, source: str
) -> bool:
    """The worker stopped the stage because its job was cancelled; False when another
    worker holds the stage now (that one reports the cancellation)."""
    if not await _finish(conn, job.id, stage, JobState.cancelled, worker=worker):
        return False
    await _announce(
        conn,
        job.id,
        job.owner_id,
        stage,
        JobState.cancelled,
        0.0,
        source=source,
        message=f"{stage.value} stopped: job cancelled",
    )
    return True


async def _finish(
    conn: Connection,
    job_id: uuid.UUID,
    stage: Stage,
    state: JobState,
    *,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
    worker: str | None = None,
) -> bool:
    """Record the stage's end. With `worker`, only while that worker holds the stage: a
    worker whose lease another one took over cannot overwrite the newer attempt."""
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


# ---- a stage's input sent again ----


async def requeue(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    owner_id: str,
    stage: Stage,
    event: EventData,
    source: str,
    why: str,
    traceparent: str | None = None,
) -> None:
    """The stage's input goes out again (its worker was lost, or the event was): the
    consumers skip it if the stage got done meanwhile."""
    await enqueue(conn, event, source=source, traceparent=traceparent)
    await _announce(
        conn,
        job_id,
        owner_id,
        stage,
        JobState.queued,
        0.0,
        source=source,
        message=f"{stage.value} re-queued ({why})",
    )


# ---- a job's lifecycle, by its owner or an admin ----


@dataclass(frozen=True)
class LockedJob:
    """A job row locked for the caller's transaction, with its stage rows."""

    row: asyncpg.Record
    stages: dict[Stage, asyncpg.Record]
    state: JobState

    @property
    def owner_id(self) -> str:
        owner: str = self.row["owner_id"]
        return owner


async def lock_job(conn: Connection, job_id: uuid.UUID) -> LockedJob:
    """Lock the job (cancel, rerun and delete serialise on it) and derive its state."""
    row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1 FOR UPDATE", job_id)
    if row is None:
        raise JobNotFound(job_id)
    rows = await conn.fetch("SELECT * FROM job_stages WHERE job_id = $1", job_id)
    stages = {Stage(r["stage"]): r for r in rows}
    state = derive_job_state(
        row["cancelled_at"] is not None, {s: r["state"] for s, r in stages.items()}
    )
    return LockedJob(row, stages, state)


async def cancel(conn: Connection, job_id: uuid.UUID, *, by: str, source: str) -> LockedJob:
    """Cancel a job that has not finished: workers stop at their next progress report or
    checkpoint, and no stage starts for it any more. `by` says who, for the history."""
    locked = await lock_job(conn, job_id)
    if locked.state in FINISHED:
        raise TransitionRefused(
            "Job already finished", f"the job is {locked.state.value}", locked.state
        )
    states = {s: r["state"] for s, r in locked.stages.items()}
    # The stage the job is in: the first one not done yet.
    current = next(
        (s for s in PIPELINE.order if states.get(s) != JobState.done), PIPELINE.order[-1]
    )
    await conn.execute("UPDATE jobs SET cancelled_at = now() WHERE id = $1", job_id)
    await record_status(
        conn,
        job_id=job_id,
        owner_id=locked.owner_id,
        stage=current,
        state=JobState.cancelled,
        progress=job_progress(
            locked.state, {s: (r["state"], float(r["progress"])) for s, r in locked.stages.items()}
        ),
        source=source,
        message=f"cancelled by {by}",
    )
    return locked


async def rerun(
    conn: Connection,
    job_id: uuid.UUID,
    from_stage: Stage,
    *,
    options: Callable[[dict[str, Any]], JobOptions],
    source: str,
    pipeline: Pipeline = PIPELINE,
) -> int:
    """Run a done or failed job again from `from_stage`, keeping what the stages it does not
    redo produced: a new generation of the job, in which the rows of `from_stage` and the
    stages after it are reset (removed) and the others carried over, announced by
    `from_stage`'s input event. `options` turns the stored options into the new run's.
    Returns the new generation."""
    locked = await lock_job(conn, job_id)
    if locked.state not in (JobState.done, JobState.failed):
        raise TransitionRefused(
            "Job not finished",
            f"only a done or failed job can be reprocessed; this one is {locked.state.value}",
            locked.state,
        )
    redo = pipeline.later(from_stage)
    asked_before = JobOptions.model_validate(locked.row["options"] or {})
    never_asked = pipeline.not_requested(asked_before)
    # What a rerun from `from_stage` keeps must be there: every stage it does not redo (a
    # stage the job did not ask for has nothing to keep).
    for kept in (s for s in pipeline.order if s not in redo and s not in never_asked):
        row = locked.stages.get(kept)
        if row is None or row["state"] != JobState.done:
            raise TransitionRefused(
                "Earlier stage not done",
                f"reprocessing from {from_stage.value} needs {kept.value} done first",
            )
    new_options = options(locked.row["options"] or {})
    # A stage that was not asked for and now is (speakers turned on) has nothing to keep:
    # only a rerun that redoes it can run it.
    asked_now = pipeline.not_requested(new_options)
    if missing := [s for s in never_asked if s not in redo and s not in asked_now]:
        raise TransitionRefused(
            "Stage never ran",
            f"{missing[0].value} did not run for this job; reprocess from {missing[0].value}",
        )
    generation = await _new_run(conn, job_id, new_options, (*redo, *never_asked))
    event = await rebuild_stage_input(
        conn, job_id, from_stage, generation=generation, options=new_options, pipeline=pipeline
    )
    if event is None:
        raise TransitionRefused("Not transcribed", "the job has no transcript to reprocess from")
    await _announce(
        conn,
        job_id,
        locked.owner_id,
        from_stage,
        JobState.queued,
        0.0,
        source=source,
        message=f"reprocessing from {from_stage.value} (run {generation})",
    )
    await enqueue(conn, event, source=source)
    return generation


async def _new_run(
    conn: Connection, job_id: uuid.UUID, options: JobOptions, redo: tuple[Stage, ...]
) -> int:
    """The job's next generation with `options`, in which the stages of `redo` start
    afresh; returns it."""
    generation: int = await conn.fetchval(
        "UPDATE jobs SET generation = generation + 1, options = $2 WHERE id = $1"
        " RETURNING generation",
        job_id,
        options.model_dump(mode="json"),
    )
    # The redone stages have not run in the new generation; the kept ones carry over into
    # it (a kept stage that consumes the rerun's input event skips it as already done).
    # Stages not asked for are marked again by the run's first start, with its options.
    await conn.execute(
        "DELETE FROM job_stages WHERE job_id = $1 AND stage = ANY($2::text[])",
        job_id,
        [s.value for s in redo],
    )
    await conn.execute(
        "UPDATE job_stages SET generation = $2 WHERE job_id = $1", job_id, generation
    )
    return generation


async def rerun_after_edit(
    conn: Connection,
    locked: LockedJob,
    edited: EventData,
    *,
    source: str,
    pipeline: Pipeline = PIPELINE,
) -> int:
    """A person's edit of the transcript, in the caller's transaction (the job locked by
    `lock_job`): a new generation of the job in which the stage that consumes `edited`
    (transcript.edited: the chunk stage) and the stages after it run again, announced by
    `edited`. Unlike `rerun`, a job whose later stages are still at work (an earlier
    edit being re-cut) is accepted: their rows are reset, so the worker that holds one
    loses its lease and drops its result, and the new run covers both edits. Every stage
    before must be done. Returns the new generation."""
    if locked.state is JobState.cancelled:
        raise TransitionRefused("Job cancelled", "a cancelled job's transcript cannot be edited")
    (spec,) = pipeline.consuming(edited.topic)
    redo = pipeline.later(spec.stage)
    options = JobOptions.model_validate(locked.row["options"] or {})
    never_asked = pipeline.not_requested(options)
    for kept in (s for s in pipeline.order if s not in redo and s not in never_asked):
        row = locked.stages.get(kept)
        if row is None or row["state"] != JobState.done:
            raise TransitionRefused(
                "Transcript not ready", f"the job's {kept.value} stage has not finished yet"
            )
    generation = await _new_run(conn, locked.row["id"], options, (*redo, *never_asked))
    await _announce(
        conn,
        locked.row["id"],
        locked.owner_id,
        spec.stage,
        JobState.queued,
        0.0,
        source=source,
        message=f"transcript edited: {spec.stage.value} again (run {generation})",
    )
    await enqueue(conn, edited.model_copy(update={"generation": generation}), source=source)
    return generation


async def delete(conn: Connection, job_id: uuid.UUID) -> str:
    """Delete a finished job and everything derived from it (stages, history, transcript,
    chunks, vectors: ON DELETE CASCADE), leaving a tombstone for the workers, and its blob
    row when no other job uses the same stored file. A job still being worked on must be
    cancelled, and have stopped, first: deleting under a running worker would race its
    commit. Returns the audio URI, for the caller to delete the file after commit when
    nothing references it any more."""
    locked = await lock_job(conn, job_id)
    still_running = any(r["state"] == JobState.running for r in locked.stages.values())
    if locked.state not in FINISHED or still_running:
        raise TransitionRefused(
            "Job still running",
            "cancel the job and wait until it stopped before deleting it",
            locked.state,
        )
    uri: str = await conn.fetchval("DELETE FROM jobs WHERE id = $1 RETURNING audio_uri", job_id)
    await conn.execute(
        "INSERT INTO deleted_jobs (id, owner_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        job_id,
        locked.owner_id,
    )
    await conn.execute(
        "DELETE FROM blobs b WHERE b.owner_id = $1 AND b.uri = $2"
        " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.owner_id = $1 AND j.audio_uri = $2)",
        locked.owner_id,
        uri,
    )
    return uri


class Replayed(StrEnum):
    rerun = "reprocessed"  # the job, failed at the letter's stage, runs again from there
    republished = "republished"  # the record goes to its topic again, under a new id


@dataclass(frozen=True)
class Replay:
    action: Replayed
    job_id: uuid.UUID | None
    event_id: str | None = None  # of the republished record


async def replay(
    conn: Connection,
    *,
    topic: str,
    key: bytes | None,
    headers: dict[str, str],
    body: bytes,
    letter_id: str,
    source: str,
    pipeline: Pipeline = PIPELINE,
) -> Replay:
    """Give a dead letter of `topic` (a `<topic>.dlq` record, `letter_id` where it lies)
    another chance. A job that failed at the letter's stage is rerun from that stage (a new
    run: the failed one stays in the history); anything else is published again to its
    original topic under a new event id."""
    why = DeadLetter.from_headers(headers)
    original = why.original_topic if why else topic.removesuffix(".dlq")
    stage = pipeline.stage_of_dead_letter(original, why.consumer if why else None)
    job_id = _job_of(key, body)
    if stage is not None and job_id is not None and await _failed(conn, job_id):
        await rerun(
            conn,
            job_id,
            stage,
            options=JobOptions.model_validate,
            source=source,
            pipeline=pipeline,
        )
        return Replay(Replayed.rerun, job_id)
    new_id = str(uuid.uuid4())
    again = {k: v for k, v in headers.items() if not k.startswith("x_")}
    again.update({"ce_id": new_id, "x_replay_of": headers.get("ce_id", letter_id)})
    if "ce_time" in again:
        again["ce_time"] = datetime.now(UTC).isoformat()
    await enqueue_raw(
        conn, original, key.decode(errors="replace") if key else "unknown", again, body
    )
    return Replay(Replayed.republished, job_id, new_id)


async def _failed(conn: Connection, job_id: uuid.UUID) -> bool:
    try:
        return (await lock_job(conn, job_id)).state == JobState.failed
    except JobNotFound:  # deleted since: nothing to rerun
        return False


def _job_of(key: bytes | None, body: bytes) -> uuid.UUID | None:
    """The job a dead letter names: its key, else the body's job_id."""
    candidates = [key.decode(errors="replace")] if key else []
    with contextlib.suppress(ValueError, RecursionError):
        value = json.loads(body)
        if isinstance(value, dict) and value.get("job_id"):
            candidates.append(str(value["job_id"]))
    for candidate in candidates:
        with contextlib.suppress(ValueError):
            return uuid.UUID(candidate)
    return None
