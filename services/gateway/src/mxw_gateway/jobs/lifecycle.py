"""Lifecycle commands of the jobs module: cancel, delete and reprocess a job. The rules are
the shared transitions' (mxw_shared.transitions); this checks the caller may act on the job
and turns a refused transition into 409 problem+json."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mxw_shared import transitions
from mxw_shared.blobs import BlobStore
from mxw_shared.contracts import JobOptions, Stage
from mxw_shared.db import Connection, Pool
from mxw_shared.problems import Problem
from pydantic import ValidationError

from mxw_gateway.auth import CurrentUser
from mxw_gateway.edits import repository as edits_repository
from mxw_gateway.jobs.admission import check_model, delete_unreferenced
from mxw_gateway.jobs.schemas import JobView
from mxw_gateway.jobs.views import get_job_view, job_not_found, load_owned_job
from mxw_gateway.settings import GatewaySettings
from mxw_gateway.vocabulary.service import user_terms


@contextmanager
def as_problems(job_id: uuid.UUID) -> Iterator[None]:
    """A refused transition as 409 problem+json, a job deleted meanwhile as 404."""
    try:
        yield
    except transitions.TransitionRefused as exc:
        extra: dict[str, Any] = {} if exc.state is None else {"state": exc.state.value}
        raise Problem(409, exc.title, exc.detail, **extra) from exc
    except transitions.JobNotFound as exc:  # deleted since the caller's check
        raise job_not_found(job_id) from exc


async def cancel_job(
    pool: Pool, settings: GatewaySettings, user: CurrentUser, job_id: uuid.UUID
) -> JobView:
    job = await load_owned_job(pool, user, job_id)
    by = "an admin" if job["owner_id"] != user.sub else "the owner"
    with as_problems(job_id):
        async with pool.acquire() as conn, conn.transaction():
            await transitions.cancel(conn, job_id, by=by, source=settings.service_name)
    return await get_job_view(pool, settings, user, job_id)


async def delete_job(pool: Pool, store: BlobStore, user: CurrentUser, job_id: uuid.UUID) -> None:
    """Delete a finished job with its blob, transcript, chunks and vectors (transitions.
    delete); the stored file goes once nothing references it."""
    await load_owned_job(pool, user, job_id)
    with as_problems(job_id):
        async with pool.acquire() as conn, conn.transaction():
            uri = await transitions.delete(conn, job_id)
    await delete_unreferenced(pool, store, uri)


async def reprocess_job(
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    job_id: uuid.UUID,
    from_stage: Stage,
    option_changes: dict[str, Any],
    *,
    use_vocabulary: bool = True,
    discard_edits: bool = False,
) -> JobView:
    """Run a finished job again from `from_stage` (e.g. re-chunk with another method without
    transcribing again), with `option_changes` over its stored options (transitions.rerun).
    A run that transcribes again takes the user's vocabulary as it is now, merged after the
    hotwords (unless `use_vocabulary` is false), and replaces a corrected transcript only
    when asked to (`discard_edits`: the corrections and their history go)."""
    await load_owned_job(pool, user, job_id)
    vocabulary = await user_terms(pool, user, use_vocabulary and from_stage == Stage.transcribe)

    def options(stored: dict[str, Any]) -> JobOptions:
        try:
            changed = JobOptions.model_validate({**stored, **option_changes})
        except ValidationError as exc:
            raise Problem(422, "Invalid job options", str(exc).splitlines()[0]) from exc
        if "model" in option_changes:
            check_model(changed, settings)
        return vocabulary.apply(changed)

    with as_problems(job_id):
        async with pool.acquire() as conn, conn.transaction():
            await transitions.rerun(
                conn, job_id, from_stage, options=options, source=settings.service_name
            )
            if from_stage == Stage.transcribe:
                await _discard_edits(conn, job_id, discard_edits)
    return await get_job_view(pool, settings, user, job_id)


async def _discard_edits(conn: Connection, job_id: uuid.UUID, discard: bool) -> None:
    revision = await edits_repository.current_revision(conn, job_id)
    if revision and not discard:
        raise Problem(
            409,
            "Transcript edited",
            f"the transcript has {revision} revision(s) of corrections; transcribing again "
            'replaces it: send "discard_edits": true to do so, or reprocess from chunk to '
            "keep them",
            revision=revision,
        )
    await edits_repository.discard_revisions(conn, job_id)
