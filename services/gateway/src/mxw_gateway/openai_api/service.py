"""Use cases of the OpenAI-compatible API. A transcription request is an upload (the jobs
module's storage, probe and job creation: one transaction with AudioUploaded) followed by a
bounded wait for the transcribe stage; the answer is in OpenAI's formats."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from mxw_shared.audio import AudioRefused, NotAudio, probe_audio
from mxw_shared.blobs import BlobStore, BlobTooLarge, StoredBlob
from mxw_shared.contracts import JobState, Stage
from mxw_shared.db import Pool
from mxw_shared.problems import Problem

from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs import service as jobs
from mxw_gateway.jobs.domain import sanitize_filename
from mxw_gateway.jobs.multipart import PartData, PartEnd, PartStart, boundary_of, multipart_events
from mxw_gateway.jobs.schemas import JobView
from mxw_gateway.openai_api import repository
from mxw_gateway.openai_api.domain import (
    LIST_FIELDS,
    SCALAR_FIELDS,
    InvalidRequest,
    StoredSegment,
    StoredTranscript,
    TranscriptionRequest,
    parse_request,
)
from mxw_gateway.settings import GatewaySettings

_TITLES = {400: "Bad request", 409: "Conflict", 413: "Upload too large"}


def openai_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    title: str | None = None,
    **extra: Any,
) -> Problem:
    """A problem+json error that also carries OpenAI's `error` object, so OpenAI clients
    show the message and every other client sees the gateway's one error shape."""
    return Problem(
        status,
        title or _TITLES.get(status, "Transcription failed"),
        message,
        error={"message": message, "type": type_, "param": param, "code": code},
        **extra,
    )


@dataclass
class TranscriptionForm:
    fields: dict[str, str]
    granularities: list[str]
    blob: StoredBlob | None
    filename: str | None


async def read_form(
    body: AsyncIterator[bytes],
    content_type: str | None,
    store: BlobStore,
    settings: GatewaySettings,
    stored: list[StoredBlob],
) -> TranscriptionForm:
    """Stream the multipart body: the file part to the blob store, the small fields into
    memory. Unlike the jobs upload form, `timestamp_granularities[]` may repeat."""
    form = TranscriptionForm(fields={}, granularities=[], blob=None, filename=None)
    events = multipart_events(boundary_of(content_type), body).__aiter__()

    async def part_bytes() -> AsyncIterator[bytes]:
        async for event in events:
            if isinstance(event, PartData):
                yield event.data
            elif isinstance(event, PartEnd):
                return
        raise openai_error(400, "multipart body ended inside a part")

    async for event in events:
        if not isinstance(event, PartStart):
            continue
        if event.name == "file":
            if form.blob is not None:
                raise openai_error(400, "more than one 'file' part", param="file")
            form.filename = event.filename
            form.blob = await store.put_stream(part_bytes(), settings.max_upload_bytes)
            stored.append(form.blob)
            continue
        if event.name not in SCALAR_FIELDS | LIST_FIELDS:
            raise openai_error(
                400, f"unrecognized request argument: {event.name}", param=event.name
            )
        value = bytearray()
        async for data in part_bytes():
            value += data
            if len(value) > settings.max_form_field_bytes:
                raise openai_error(413, f"field {event.name!r} is too large", param=event.name)
        text = value.decode("utf-8", errors="replace")
        if event.name in LIST_FIELDS:
            if len(form.granularities) >= 2:
                raise openai_error(400, "too many timestamp_granularities", param=event.name)
            form.granularities.append(text.strip())
        elif event.name in form.fields:
            raise openai_error(400, f"{event.name} given twice", param=event.name)
        else:
            form.fields[event.name] = text
    return form


@dataclass(frozen=True)
class Submitted:
    job_id: uuid.UUID
    request: TranscriptionRequest


async def submit(
    *,
    body: AsyncIterator[bytes],
    content_type: str | None,
    user: CurrentUser,
    settings: GatewaySettings,
    pool: Pool,
    store: BlobStore,
) -> Submitted:
    """Store and probe the audio and create its job exactly as an upload does."""
    stored: list[StoredBlob] = []
    try:
        try:
            form = await read_form(body, content_type, store, settings, stored)
        except UnicodeError as exc:
            # python-multipart refuses part headers that are not Latin-1 (e.g. a field name
            # in another script) with this instead of its parse error.
            raise openai_error(400, "malformed multipart part header") from exc
        try:
            request = parse_request(
                form.fields,
                form.granularities,
                settings.openai_models,
                settings.openai_default_model,
            )
        except InvalidRequest as exc:
            raise openai_error(400, str(exc), param=exc.param) from exc
        blob = form.blob
        if blob is None:
            raise openai_error(400, "you must provide a file parameter", param="file")
        if blob.size_bytes == 0:
            raise openai_error(400, "the audio file is empty", param="file", code="empty_file")
        try:
            info = await asyncio.to_thread(probe_audio, blob.path, settings.max_audio_seconds)
        except (NotAudio, AudioRefused) as exc:
            raise openai_error(
                400, f"invalid file format: {exc}", param="file", code="invalid_file_format"
            ) from exc
        filename = sanitize_filename(form.filename, settings.max_filename_chars)
        # Same audio as one of the caller's jobs: reuse it only if it was asked for with the
        # same options (a job without word timestamps cannot answer a word-level request).
        # Two identical requests at the same instant may both create a job; both get answers.
        job_id = await repository.find_job_with_options(
            pool, user.sub, blob.sha256, request.options.model_dump(mode="json")
        )
        if job_id is None:
            job_id, _ = await jobs._create_job(
                pool,
                settings,
                user,
                blob,
                info.content_type,
                filename,
                request.options,
                True,
                store=store,
            )
    except BlobTooLarge as exc:
        raise openai_error(
            413, f"the file exceeds the limit of {exc.limit} bytes", param="file"
        ) from exc
    except BaseException:
        for blob in stored:
            await jobs.discard_unreferenced(pool, store, blob)
        raise
    return Submitted(job_id=job_id, request=request)


class WaitSlots:
    """How many requests of each user are held open waiting for a transcript (this replica):
    each costs a connection and a query per poll for up to `openai_wait_s`."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._held: dict[str, int] = {}

    @contextlib.contextmanager
    def take(self, user: str) -> Iterator[bool]:
        """True while a slot is held for `user`; False (nothing held) when all are taken."""
        if self._held.get(user, 0) >= self.per_user:
            yield False
            return
        self._held[user] = self._held.get(user, 0) + 1
        try:
            yield True
        finally:
            self._held[user] -= 1
            if not self._held[user]:
                del self._held[user]


async def wait_for_transcript(
    pool: Pool, settings: GatewaySettings, user: CurrentUser, job_id: uuid.UUID
) -> tuple[JobView, StoredTranscript | None]:
    """Poll the job until its transcribe stage finished or `openai_wait_s` passed. Returns
    the job view and the transcript (None: not ready in time). A failed or cancelled job
    raises an OpenAI-style error carrying its reason."""
    deadline = time.monotonic() + settings.openai_wait_s
    while True:
        view = await jobs.get_job(pool, settings, user, job_id)
        transcribe = next(s for s in view.stages if s.stage == Stage.transcribe)
        if transcribe.state == JobState.done:
            transcript = await load_transcript(pool, job_id, view)
            if transcript is not None:
                return view, transcript
        if view.state == JobState.failed or transcribe.state == JobState.failed:
            raise _job_failed(settings, view, transcribe.attempts, transcribe.error)
        if view.state == JobState.cancelled:
            raise openai_error(
                409,
                "the transcription job was cancelled",
                type_="job_cancelled",
                code="job_cancelled",
                job_id=str(job_id),
            )
        if time.monotonic() >= deadline:
            return view, None
        await asyncio.sleep(
            min(settings.openai_poll_interval_s, max(deadline - time.monotonic(), 0.0))
        )


def _job_failed(
    settings: GatewaySettings, view: JobView, attempts: int, error: str | None
) -> Problem:
    reason = view.error or (f"transcribe failed: {error}" if error else "the job failed")
    # Work that failed at once was refused for what it is (undecodable audio, a model the
    # transcriber cannot load): the request's fault. Retries exhausted: ours.
    exhausted = attempts >= settings.max_attempts
    return openai_error(
        502 if exhausted else 422,
        reason,
        type_="server_error" if exhausted else "invalid_request_error",
        code="job_failed",
        title="Transcription failed",
        job_id=str(view.id),
    )


async def load_transcript(pool: Pool, job_id: uuid.UUID, view: JobView) -> StoredTranscript | None:
    found = await repository.fetch_transcript(pool, job_id)
    if found is None:
        return None
    transcript, segments = found
    return StoredTranscript(
        language=transcript["language"],
        duration_s=float(transcript["duration_s"]),
        text=str(transcript["text"]).strip(),
        task=view.options.task.value,
        segments=[
            StoredSegment(
                index=s["idx"],
                start=float(s["start_s"]),
                end=float(s["end_s"]),
                text=s["text"],
                avg_logprob=s["avg_logprob"],
                no_speech_prob=s["no_speech_prob"],
                words=s["words"],
            )
            for s in segments
        ],
    )
