"""Lifecycle commands of the jobs module: cancel, delete and reprocess a job, each in one
transaction holding the job's row lock."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from mxw_shared.blobs import BlobStore
from mxw_shared.contracts import JobOptions, JobState, Stage
from mxw_shared.db import Pool
from mxw_shared.jobs import STAGE_ORDER, derive_job_state, overall_progress, record_status
from mxw_shared.outbox import enqueue
from mxw_shared.problems import Problem
from mxw_shared.stage_inputs import rebuild_stage_input
from mxw_shared.stages import PIPELINE
from pydantic import ValidationError

from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs import repository
from mxw_gateway.jobs.admission import check_model, delete_unreferenced
from mxw_gateway.jobs.domain import job_progress
from mxw_gateway.jobs.schemas import JobView
from mxw_gateway.jobs.views import current_stages, get_job_view, job_not_found, load_owned_job
from mxw_gateway.settings import GatewaySettings


@dataclass(frozen=True)
class LockedJob:
    """A job row locked for the caller's transaction, with its stage rows."""

    row: asyncpg.Record
    all_stages: list[asyncpg.Record]  # every run's rows
    stages: dict[Stage, Any]  # the current run's rows
    state: JobState


async def _lock_job(conn: asyncpg.Connection[asyncpg.Record], job_id: uuid.UUID) -> LockedJob:
    """Lock the job (cancel, reprocess and delete serialise on it) and derive its state."""
    row = await conn.fetchrow(
        "SELECT id, owner_id, cancelled_at, generation, rerun_from, options, audio_uri,"
        " sha256, size_bytes, filename, content_type FROM jobs WHERE id = $1 FOR UPDATE",
        job_id,
    )
    if row is None:
        raise job_not_found(job_id)
    all_stages = (await repository.fetch_stages(conn, [job_id]))[job_id]
    stages = current_stages(row, all_stages)
    state = derive_job_state(
        row["cancelled_at"] is not None, {s: r["state"] for s, r in stages.items()}
    )
    return LockedJob(row, all_stages, stages, state)


async def cancel_job(
    pool: Pool, settings: GatewaySettings, user: CurrentUser, job_id: uuid.UUID
) -> JobView:
    await load_owned_job(pool, user, job_id)
    async with pool.acquire() as conn, conn.transaction():
        locked = await _lock_job(conn, job_id)
        job, state = locked.row, locked.state
        stages = {s: r["state"] for s, r in locked.stages.items()}
        if state in (JobState.done, JobState.failed, JobState.cancelled):
            raise Problem(
                409, "Job already finished", f"the job is {state.value}", state=state.value
            )
        # The stage the job is in: the first one not done yet.
        current = next((s for s in STAGE_ORDER if stages.get(s) != JobState.done), STAGE_ORDER[-1])
        progress = job_progress(
            state, {s: (r["state"], float(r["progress"])) for s, r in locked.stages.items()}
        )
        await repository.mark_cancelled(conn, job_id)
        await record_status(
            conn,
            job_id=job_id,
            owner_id=job["owner_id"],
            stage=current,
            state=JobState.cancelled,
            progress=progress,
            source=settings.service_name,
            message=f"cancelled by {'an admin' if job['owner_id'] != user.sub else 'the owner'}",
        )
    return await get_job_view(pool, settings, user, job_id)


async def delete_job(pool: Pool, store: BlobStore, user: CurrentUser, job_id: uuid.UUID) -> None:
    """Delete a finished job with its blob, transcript, chunks and vectors. A job still
    being worked on must be cancelled (and have stopped) first: deleting under a running
    worker would race its commit."""
    await load_owned_job(pool, user, job_id)
    async with pool.acquire() as conn, conn.transaction():
        locked = await _lock_job(conn, job_id)
        job, state = locked.row, locked.state
        still_running = any(r["state"] == JobState.running for r in locked.all_stages)
        if state not in (JobState.done, JobState.failed, JobState.cancelled) or still_running:
            raise Problem(
                409,
                "Job still running",
                "cancel the job and wait until it stopped before deleting it",
                state=state.value,
            )
        uri = await repository.delete_job(conn, job_id, job["owner_id"])
    await delete_unreferenced(pool, store, uri)


async def reprocess_job(
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    job_id: uuid.UUID,
    from_stage: Stage,
    option_changes: dict[str, Any],
) -> JobView:
    """Run a finished job again from `from_stage` (e.g. re-chunk with another method without
    transcribing again): a new generation of the job, announced by the input event of that
    stage, in one transaction. Earlier stages' results are reused as they are."""
    await load_owned_job(pool, user, job_id)
    async with pool.acquire() as conn, conn.transaction():
        locked = await _lock_job(conn, job_id)
        job, stages, state = locked.row, locked.stages, locked.state
        if state not in (JobState.done, JobState.failed):
            raise Problem(
                409,
                "Job not finished",
                f"only a done or failed job can be reprocessed; this one is {state.value}",
                state=state.value,
            )
        # What a rerun from `from_stage` keeps must be there: every stage it does not redo.
        for earlier in (s for s in STAGE_ORDER if s not in PIPELINE.later(from_stage)):
            row = stages.get(earlier)
            if row is None or row["state"] != JobState.done:
                raise Problem(
                    409,
                    "Earlier stage not done",
                    f"reprocessing from {from_stage.value} needs {earlier.value} done first",
                )
        try:
            options = JobOptions.model_validate({**(job["options"] or {}), **option_changes})
        except ValidationError as exc:
            raise Problem(422, "Invalid job options", str(exc).splitlines()[0]) from exc
        if "model" in option_changes:
            check_model(options, settings)
        generation = await repository.start_generation(
            conn, job_id, from_stage.value, options.model_dump(mode="json")
        )
        event = await rebuild_stage_input(
            conn, job_id, from_stage, generation=generation, options=options
        )
        if event is None:
            raise Problem(409, "Not transcribed", "the job has no transcript to reprocess from")
        await record_status(
            conn,
            job_id=job_id,
            owner_id=job["owner_id"],
            stage=from_stage,
            state=JobState.queued,
            progress=overall_progress(from_stage, 0.0),
            source=settings.service_name,
            message=f"reprocessing from {from_stage.value} (run {generation})",
        )
        await enqueue(conn, event, source=settings.service_name)
    return await get_job_view(pool, settings, user, job_id)
