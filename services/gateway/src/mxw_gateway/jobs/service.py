"""Use cases of the jobs module: upload, read, cancel. Routes parse; this decides."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from mxw_shared.audio import AudioInfo, AudioRefused, AudioTooLong, NotAudio, probe_audio
from mxw_shared.blobs import (
    ALLOWED_AUDIO_CONTENT_TYPES,
    UNKNOWN_AUDIO_TYPE,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    StoredBlob,
    release_blob,
)
from mxw_shared.contracts import (
    AudioUploaded,
    JobOptions,
    JobState,
    Stage,
)
from mxw_shared.db import Pool
from mxw_shared.jobs import (
    STAGE_ORDER,
    derive_job_state,
    is_stale,
    overall_progress,
    record_status,
)
from mxw_shared.outbox import enqueue
from mxw_shared.problems import Problem
from mxw_shared.stage_inputs import rebuild_stage_input
from mxw_shared.stages import PIPELINE
from pydantic import ValidationError

from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs import repository, subtitles
from mxw_gateway.jobs.domain import (
    RangeNotSatisfiable,
    decode_cursor,
    encode_cursor,
    job_progress,
    parse_byte_range,
    sanitize_filename,
)
from mxw_gateway.jobs.multipart import boundary_of, multipart_events, read_form
from mxw_gateway.jobs.schemas import (
    ChunkList,
    ChunkView,
    JobLinks,
    JobPage,
    JobSummary,
    JobView,
    StageView,
    TranscriptSegment,
    TranscriptView,
)
from mxw_gateway.settings import GatewaySettings

OPTION_FIELDS = frozenset(JobOptions.model_fields)
FORM_FIELDS = OPTION_FIELDS | {"force", "file"}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class UploadResult:
    job: JobView
    created: bool


def parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise Problem(422, "Invalid request", f"{name} must be true or false")


def parse_options(fields: dict[str, str]) -> JobOptions:
    unknown = sorted(set(fields) - FORM_FIELDS)
    if unknown:
        raise Problem(422, "Invalid request", f"unknown form fields: {', '.join(unknown)}")
    values = {k: v for k, v in fields.items() if k in OPTION_FIELDS and v.strip() != ""}
    try:
        return JobOptions.model_validate(values)
    except ValidationError as exc:
        errors = [
            {"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        raise Problem(
            422,
            "Invalid job options",
            "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in errors),
            errors=errors,
        ) from exc


async def probe(blob: StoredBlob, settings: GatewaySettings) -> AudioInfo:
    """The stored file as audio we accept: 415 for what is not audio, 422 for a container
    outside the allow-list or audio longer than MXW_MAX_AUDIO_SECONDS."""
    try:
        return await asyncio.to_thread(probe_audio, blob.path, settings.max_audio_seconds)
    except NotAudio as exc:
        raise Problem(415, "Unsupported media type", str(exc)) from exc
    except AudioTooLong as exc:
        raise Problem(422, "Audio too long", str(exc), max_audio_seconds=exc.max_seconds) from exc
    except AudioRefused as exc:
        raise Problem(422, "Unsupported container", str(exc)) from exc


def check_model(options: JobOptions, settings: GatewaySettings) -> None:
    """Only the configured Whisper models: a name reaches the transcriber's model loader,
    which must never get a local directory or a hub id from a user."""
    if options.model is not None and options.model not in settings.openai_models:
        raise Problem(
            422,
            "Invalid job options",
            f"model: {options.model!r} is not available; choose one of "
            + ", ".join(settings.openai_models),
            allowed_models=settings.openai_models,
        )


async def upload(
    *,
    body: AsyncIterator[bytes],
    content_type: str | None,
    content_length: str | None,
    force_query: bool,
    user: CurrentUser,
    settings: GatewaySettings,
    pool: Pool,
    store: BlobStore,
) -> UploadResult:
    # Room for the multipart envelope and the small option fields around the file.
    envelope_allowance = settings.max_form_field_bytes * 4 + 64 * 1024
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError as exc:
            raise Problem(400, "Bad request", "invalid Content-Length") from exc
        if declared > settings.max_upload_bytes + envelope_allowance:
            raise _too_large(settings.max_upload_bytes)
    boundary = boundary_of(content_type)

    stored: list[StoredBlob] = []

    async def store_file(chunks: AsyncIterator[bytes]) -> StoredBlob:
        blob = await store.put_stream(chunks, settings.max_upload_bytes)
        stored.append(blob)
        return blob

    try:
        fields, blob, raw_filename = await read_form(
            multipart_events(boundary, body),
            file_field="file",
            store_file=store_file,
            max_field_bytes=settings.max_form_field_bytes,
        )
        if blob is None:
            raise Problem(
                422,
                "Invalid request",
                "the audio file is missing: send it in the multipart field 'file'",
            )
        options = parse_options(fields)
        check_model(options, settings)
        force = force_query or parse_bool("force", fields.get("force", ""))
        if blob.size_bytes == 0:
            raise Problem(415, "Unsupported media type", "the uploaded file is empty")
        info = await probe(blob, settings)
        filename = sanitize_filename(raw_filename, settings.max_filename_chars)
        job_id, created = await _create_job(
            pool, settings, user, blob, info.content_type, filename, options, force, store=store
        )
    except BlobTooLarge as exc:
        raise _too_large(exc.limit) from exc
    except BaseException:
        for blob in stored:
            await discard_unreferenced(pool, store, blob)
        raise
    view = await get_job(pool, settings, user, job_id)
    if not created:
        view = view.model_copy(update={"duplicate": True})
    return UploadResult(job=view, created=created)


async def _create_job(
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    blob: StoredBlob,
    content_type: str,
    filename: str | None,
    options: JobOptions,
    force: bool,
    *,
    store: BlobStore,
) -> tuple[uuid.UUID, bool]:
    """Blob row, job row, the queued status and AudioUploaded: one transaction, holding the
    blob's lock (a deletion of the same stored file waits, or already removed it, and the
    store puts it back before the rows commit)."""
    try:
        return await _commit_job(
            pool, settings, user, blob, content_type, filename, options, force, store
        )
    finally:
        await asyncio.to_thread(release_blob, blob)


async def _commit_job(
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    blob: StoredBlob,
    content_type: str,
    filename: str | None,
    options: JobOptions,
    force: bool,
    store: BlobStore,
) -> tuple[uuid.UUID, bool]:
    async with pool.acquire() as conn, conn.transaction():
        await repository.lock_blob(conn, blob.sha256)
        await store.restore(blob)
        await repository.lock_owner_content(conn, user.sub, blob.sha256)
        if not force:
            existing = await repository.find_reusable_job(conn, user.sub, blob.sha256)
            if existing is not None:
                return existing, False
        if settings.storage_quota_bytes is not None:
            used = await repository.stored_bytes_locked(conn, user.sub, blob.sha256)
            if used + blob.size_bytes > settings.storage_quota_bytes:
                # 413, not 507: the client's own quota, not the server's disk (a 5xx would be
                # retried and alert as an outage). Freed by deleting jobs.
                raise Problem(
                    413,
                    "Storage quota exceeded",
                    f"your stored audio ({used} bytes) and this file ({blob.size_bytes} bytes)"
                    f" exceed your quota of {settings.storage_quota_bytes} bytes; delete jobs"
                    " to free space",
                    quota_bytes=settings.storage_quota_bytes,
                    used_bytes=used,
                )
        job_id = uuid.uuid4()
        await repository.ensure_blob(conn, user.sub, blob, content_type)
        await repository.insert_job(
            conn,
            job_id=job_id,
            owner_id=user.sub,
            filename=filename,
            blob=blob,
            content_type=content_type,
            options=options,
        )
        await record_status(
            conn,
            job_id=job_id,
            owner_id=user.sub,
            stage=Stage.transcribe,
            state=JobState.queued,
            progress=0.0,
            source=settings.service_name,
            message="queued for transcription",
        )
        await enqueue(
            conn,
            AudioUploaded(
                job_id=job_id,
                owner_id=user.sub,
                audio_uri=blob.uri,
                sha256=blob.sha256,
                size_bytes=blob.size_bytes,
                filename=filename,
                content_type=content_type,
                options=options,
            ),
            source=settings.service_name,
        )
        return job_id, True


async def discard_unreferenced(pool: Pool, store: BlobStore, blob: StoredBlob) -> None:
    """Delete a rejected upload's file unless a job already uses the same content."""
    try:
        await delete_unreferenced(pool, store, blob.uri)
    except (OSError, asyncpg.PostgresError):
        pass  # keep the file when unsure: a dangling file is better than a broken job
    finally:
        await asyncio.to_thread(release_blob, blob)


async def delete_unreferenced(pool: Pool, store: BlobStore, uri: str) -> None:
    """Delete a stored file unless a job or blob row references it, checked and done under
    the blob's lock (per sha256, the file's name): an upload of the same bytes commits either
    before (the file stays) or after (and puts the file back first)."""
    async with pool.acquire() as conn, conn.transaction():
        await repository.lock_blob(conn, uri.rsplit("/", 1)[-1])
        if await repository.blob_in_use(conn, uri):
            return
        await store.delete(uri)


def _too_large(limit: int) -> Problem:
    return Problem(
        413, "Upload too large", f"the file exceeds the limit of {limit} bytes", limit=limit
    )


# ---- reading ----


def _link(settings: GatewaySettings, path: str) -> str:
    return f"{settings.public_base_url.rstrip('/')}{path}"


def current_stages(job: asyncpg.Record, stage_rows: list[asyncpg.Record]) -> dict[Stage, Any]:
    """The job's stage rows that belong to its current run (see mxw_shared.jobs.is_stale)."""
    rerun_from = Stage(job["rerun_from"]) if job["rerun_from"] else None
    return {
        Stage(r["stage"]): r
        for r in stage_rows
        if not is_stale(Stage(r["stage"]), r["generation"], job["generation"], rerun_from)
    }


def build_view(
    settings: GatewaySettings, job: asyncpg.Record, stage_rows: list[asyncpg.Record]
) -> JobView:
    by_stage = current_stages(job, stage_rows)
    state = derive_job_state(
        job["cancelled_at"] is not None, {s: r["state"] for s, r in by_stage.items()}
    )
    stages: list[StageView] = []
    error: str | None = None
    for stage in STAGE_ORDER:
        row = by_stage.get(stage)
        if row is None:
            stages.append(StageView(stage=stage, state="pending", progress=0.0))
            continue
        started, finished = row["started_at"], row["finished_at"]
        stages.append(
            StageView(
                stage=stage,
                state=row["state"],
                progress=1.0 if row["state"] == JobState.done else float(row["progress"]),
                attempts=row["attempts"],
                error=row["error"],
                queued_at=row["queued_at"],
                started_at=started,
                finished_at=finished,
                duration_s=(finished - started).total_seconds() if started and finished else None,
                # The transcriber's resume point is its own bookkeeping, not a measurement.
                metrics={k: v for k, v in (row["metrics"] or {}).items() if k != "checkpoint"},
            )
        )
        if row["state"] == JobState.failed and error is None:
            error = f"{stage.value} failed: {row['error'] or 'unknown error'}"
    progress = job_progress(
        state, {s: (r["state"], float(r["progress"])) for s, r in by_stage.items()}
    )
    transcribe = by_stage.get(Stage.transcribe)
    summary = JobSummary.from_metrics(transcribe["metrics"] if transcribe else None)
    base = f"/jobs/{job['id']}"
    return JobView(
        id=job["id"],
        state=state,
        progress=progress,
        error=error if state == JobState.failed else None,
        filename=job["filename"],
        sha256=job["sha256"],
        size_bytes=job["size_bytes"],
        content_type=job["content_type"],
        options=JobOptions.model_validate(job["options"] or {}),
        source=job["source"],
        owner_id=job["owner_id"],
        created_at=job["created_at"],
        cancelled_at=job["cancelled_at"],
        stages=stages,
        summary=summary,
        links=JobLinks(
            job=_link(settings, base),
            audio=_link(settings, f"{base}/audio"),
            transcript=_link(settings, f"{base}/transcript"),
            transcript_txt=_link(settings, f"{base}/transcript.txt"),
        ),
    )


def _not_found(job_id: uuid.UUID) -> Problem:
    return Problem(404, "Not found", f"no job {job_id}")


async def load_owned_job(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> asyncpg.Record:
    """The job row if the caller may see it; another user's job is reported as missing so
    that its existence is not revealed."""
    job = await repository.fetch_job(pool, job_id)
    if job is None or (job["owner_id"] != user.sub and not user.is_admin):
        raise _not_found(job_id)
    return job


async def get_job(
    pool: Pool, settings: GatewaySettings, user: CurrentUser, job_id: uuid.UUID
) -> JobView:
    job = await load_owned_job(pool, user, job_id)
    stages = await repository.fetch_stages(pool, [job_id])
    return build_view(settings, job, stages[job_id])


async def list_jobs(
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    *,
    limit: int,
    cursor: str | None,
    offset: int,
    all_users: bool,
    states: list[JobState] | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    filename: str | None = None,
) -> JobPage:
    if all_users and not user.is_admin:
        raise Problem(403, "Forbidden", "only admins may list every user's jobs")
    after: tuple[datetime, uuid.UUID] | None = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ValueError as exc:
            raise Problem(422, "Invalid request", "invalid cursor") from exc
        offset = 0
    rows = await repository.list_jobs(
        pool,
        owner_id=None if all_users else user.sub,
        limit=limit + 1,
        after=after,
        offset=offset,
        states=[s.value for s in states] if states else None,
        created_from=created_from,
        created_to=created_to,
        filename=filename,
    )
    page = rows[:limit]
    stages = await repository.fetch_stages(pool, [r["id"] for r in page])
    next_cursor = (
        encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    )
    return JobPage(
        items=[build_view(settings, r, stages[r["id"]]) for r in page], next_cursor=next_cursor
    )


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
        raise _not_found(job_id)
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
    return await get_job(pool, settings, user, job_id)


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
    return await get_job(pool, settings, user, job_id)


async def get_transcript(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> TranscriptView:
    await load_owned_job(pool, user, job_id)
    found = await repository.fetch_transcript(pool, job_id)
    if found is None:
        raise Problem(
            409, "Transcript not ready", "the job has not been transcribed yet", job_id=str(job_id)
        )
    transcript, segments = found
    return TranscriptView(
        job_id=job_id,
        language=transcript["language"],
        language_probability=transcript["language_probability"],
        duration=transcript["duration_s"],
        model=transcript["model"],
        text=transcript["text"],
        complete=transcript["complete"],
        segments=[
            TranscriptSegment(
                index=s["idx"],
                start=s["start_s"],
                end=s["end_s"],
                text=s["text"],
                words=s["words"],
            )
            for s in segments
        ],
    )


def render_transcript(transcript: TranscriptView, fmt: str) -> tuple[str, str]:
    """(body, media type) of the transcript in `fmt`: json, txt, srt or vtt."""
    if fmt == "json":
        return transcript.model_dump_json(), "application/json"
    if fmt == "srt":
        return subtitles.to_srt(transcript.segments), "application/x-subrip; charset=utf-8"
    if fmt == "vtt":
        return subtitles.to_vtt(transcript.segments), "text/vtt; charset=utf-8"
    return subtitles.to_text(transcript.segments, transcript.text), "text/plain; charset=utf-8"


async def get_chunks(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> ChunkList:
    await load_owned_job(pool, user, job_id)
    rows = await repository.fetch_chunks(pool, job_id)
    return ChunkList(
        job_id=job_id,
        chunks=[
            ChunkView(
                index=r["idx"],
                start=r["start_s"],
                end=r["end_s"],
                text=r["text"],
                title=r["title"],
                summary=r["summary"],
                topic=r["topic"],
                keywords=list(r["keywords"]),
                confidence=r["confidence"],
                method=r["method"],
            )
            for r in rows
        ],
    )


@dataclass(frozen=True)
class StoredAudio:
    """A job's audio: a blob of the gateway's store."""

    content_type: str
    filename: str | None
    uri: str


async def audio_file(
    pool: Pool, store: BlobStore, user: CurrentUser, job_id: uuid.UUID
) -> StoredAudio:
    """The job's stored audio; 409 when its URI is not one of the gateway's store (a job
    adopted from another system's event may name anything)."""
    job = await load_owned_job(pool, user, job_id)
    content_type = job["content_type"]
    if content_type not in ALLOWED_AUDIO_CONTENT_TYPES:  # never serve what a browser runs
        content_type = UNKNOWN_AUDIO_TYPE
    uri: str = job["audio_uri"]
    if not await asyncio.to_thread(store.owns, uri):
        raise Problem(
            409, "Audio not stored here", "this job's audio lives outside the gateway's store"
        )
    return StoredAudio(content_type, job["filename"], uri)


async def open_audio(
    store: BlobStore, uri: str, range_header: str | None
) -> tuple[int, tuple[int, int] | None, AsyncIterator[bytes]]:
    """(blob size, the range served or None for all of it, its bytes)."""
    try:
        size = await store.size_of(uri)
        try:
            wanted = parse_byte_range(range_header, size)
        except RangeNotSatisfiable as exc:
            raise Problem(
                416,
                "Range not satisfiable",
                f"the audio has {size} bytes",
                headers={"Content-Range": f"bytes */{size}"},
            ) from exc
        chunks = await (store.open(uri) if wanted is None else store.open_range(uri, *wanted))
    except BlobNotFound as exc:
        raise Problem(404, "Not found", "the audio file is no longer stored") from exc
    return size, wanted, chunks
