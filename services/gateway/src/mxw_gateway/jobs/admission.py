"""Admission of audio as a job, the one path of every way in (the multipart upload here,
URL ingest, the OpenAI-compatible API): probe the stored file, create its job in one
transaction with AudioUploaded, and discard the file when it is not taken."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from mxw_shared.audio import AudioRefused, AudioTooLong, NotAudio, probe_audio
from mxw_shared.blobs import BlobStore, BlobTooLarge, StoredBlob, release_blob
from mxw_shared.contracts import AudioUploaded, JobOptions, JobState, Stage
from mxw_shared.db import Pool
from mxw_shared.jobs import record_status
from mxw_shared.outbox import enqueue
from mxw_shared.problems import Problem
from pydantic import ValidationError

from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs import repository
from mxw_gateway.jobs.domain import sanitize_filename
from mxw_gateway.jobs.multipart import boundary_of, multipart_events, read_form
from mxw_gateway.jobs.schemas import JobView
from mxw_gateway.jobs.views import get_job_view
from mxw_gateway.settings import GatewaySettings
from mxw_gateway.vocabulary.service import effective_options

OPTION_FIELDS = frozenset(JobOptions.model_fields)
FORM_FIELDS = OPTION_FIELDS | {"force", "file", "use_vocabulary"}
# A form's hotwords: one field, the terms separated by commas or new lines (JSON: a list).
_HOTWORD_SEPARATORS = re.compile(r"[,\n]")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class UploadResult:
    job: JobView
    created: bool


class FormFiles:
    """The files a request's multipart form stored, discarded together when the request
    fails before one is admitted."""

    def __init__(self, store: BlobStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.stored: list[StoredBlob] = []

    async def put(self, chunks: AsyncIterator[bytes]) -> StoredBlob:
        blob = await self.store.put_stream(chunks, self.max_bytes)
        self.stored.append(blob)
        return blob

    async def discard(self, pool: Pool) -> None:
        for blob in self.stored:
            await discard_unreferenced(pool, self.store, blob)


@dataclass(frozen=True)
class Admitted:
    job_id: uuid.UUID
    created: bool  # False: an existing job of the same audio was reused


def parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise Problem(422, "Invalid request", f"{name} must be true or false")


def split_hotwords(text: str) -> list[str]:
    """A form's hotwords field as terms: split at commas and new lines, blank pieces
    dropped (the rule, normalize_hotwords, trims and bounds the rest)."""
    return [t for t in _HOTWORD_SEPARATORS.split(text) if t.strip()]


def parse_options(fields: dict[str, str]) -> JobOptions:
    unknown = sorted(set(fields) - FORM_FIELDS)
    if unknown:
        raise Problem(422, "Invalid request", f"unknown form fields: {', '.join(unknown)}")
    values: dict[str, Any] = {
        k: v for k, v in fields.items() if k in OPTION_FIELDS and v.strip() != ""
    }
    if "hotwords" in values:
        values["hotwords"] = split_hotwords(values["hotwords"])
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


def audio_problem(exc: NotAudio | AudioRefused) -> Problem:
    """415 for what is not audio, 422 for a container outside the allow-list or audio longer
    than MXW_MAX_AUDIO_SECONDS."""
    if isinstance(exc, NotAudio):
        return Problem(415, "Unsupported media type", str(exc))
    if isinstance(exc, AudioTooLong):
        return Problem(422, "Audio too long", str(exc), max_audio_seconds=exc.max_seconds)
    return Problem(422, "Unsupported container", str(exc))


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


async def admit(
    blob: StoredBlob,
    raw_filename: str | None,
    options: JobOptions,
    *,
    force: bool,
    user: CurrentUser,
    settings: GatewaySettings,
    pool: Pool,
    store: BlobStore,
    empty_file: Problem,
    refuse_audio: Callable[[NotAudio | AudioRefused], Problem] = audio_problem,
    find_reusable: Callable[[], Awaitable[uuid.UUID | None]] | None = None,
) -> Admitted:
    """Take the stored `blob` as a job: `empty_file` for a file without bytes, `refuse_audio`
    for one that is not audio we accept, then the job, or with `force` unset an existing job
    of the same audio. `find_reusable`, asked before creating, is a caller's own rule for an
    existing job to reuse (the OpenAI API's: same options). The file is discarded when
    anything fails."""
    try:
        if blob.size_bytes == 0:
            raise empty_file
        try:
            info = await asyncio.to_thread(probe_audio, blob.path, settings.max_audio_seconds)
        except (NotAudio, AudioRefused) as exc:
            raise refuse_audio(exc) from exc
        filename = sanitize_filename(raw_filename, settings.max_filename_chars)
        if find_reusable is not None:
            reusable = await find_reusable()
            if reusable is not None:  # same bytes, same file: let go of this upload's pin
                await asyncio.to_thread(release_blob, blob)
                return Admitted(reusable, created=False)
        job_id, created = await create_job(
            pool, settings, user, blob, info.content_type, filename, options, force, store=store
        )
    except BaseException:
        await discard_unreferenced(pool, store, blob)
        raise
    return Admitted(job_id, created)


async def upload_result(
    pool: Pool, settings: GatewaySettings, user: CurrentUser, admitted: Admitted
) -> UploadResult:
    """The admitted job's view, marked as a duplicate when an existing job was reused."""
    view = await get_job_view(pool, settings, user, admitted.job_id)
    if not admitted.created:
        view = view.model_copy(update={"duplicate": True})
    return UploadResult(job=view, created=admitted.created)


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
    """The multipart upload: the file part streamed to the store, the option fields beside it."""
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

    files = FormFiles(store, settings.max_upload_bytes)
    try:
        form = await read_form(
            multipart_events(boundary, body),
            file_field="file",
            store_file=files.put,
            max_field_bytes=settings.max_form_field_bytes,
        )
        if form.file is None:
            raise Problem(
                422,
                "Invalid request",
                "the audio file is missing: send it in the multipart field 'file'",
            )
        blob = form.file
        options = parse_options(form.fields)
        check_model(options, settings)
        force = force_query or parse_bool("force", form.fields.get("force", ""))
        use_vocabulary = parse_bool("use_vocabulary", form.fields.get("use_vocabulary") or "true")
        options = await effective_options(pool, user, options, use_vocabulary=use_vocabulary)
    except BlobTooLarge as exc:
        raise _too_large(exc.limit) from exc
    except BaseException:
        await files.discard(pool)
        raise
    admitted = await admit(
        blob,
        form.filename,
        options,
        force=force,
        user=user,
        settings=settings,
        pool=pool,
        store=store,
        empty_file=Problem(415, "Unsupported media type", "the uploaded file is empty"),
    )
    return await upload_result(pool, settings, user, admitted)


def _too_large(limit: int) -> Problem:
    return Problem(
        413, "Upload too large", f"the file exceeds the limit of {limit} bytes", limit=limit
    )


async def create_job(
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
