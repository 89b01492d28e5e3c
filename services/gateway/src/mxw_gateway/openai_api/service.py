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

from mxw_shared.audio import AudioRefused, NotAudio
from mxw_shared.blobs import BlobStore, BlobTooLarge
from mxw_shared.contracts import JobState, Stage
from mxw_shared.db import Pool
from mxw_shared.problems import Problem
from mxw_shared.speakers import Turns

from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs import repository as jobs_repository
from mxw_gateway.jobs.admission import FormFiles, admit
from mxw_gateway.jobs.multipart import Refusal, boundary_of, multipart_events, read_form
from mxw_gateway.jobs.schemas import JobView, StageView
from mxw_gateway.jobs.views import get_job_view
from mxw_gateway.openai_api import repository
from mxw_gateway.openai_api.domain import (
    Endpoint,
    InvalidRequest,
    StoredSegment,
    StoredTranscript,
    TranscriptionRequest,
    parse_request,
)
from mxw_gateway.settings import GatewaySettings
from mxw_gateway.vocabulary.service import effective_options

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


def _form_error(refusal: Refusal) -> Problem:
    """The multipart reader's refusals in OpenAI's error shape and wording."""
    if refusal.reason == "field_twice":
        message = f"{refusal.field} given twice"
    elif refusal.reason == "too_many_values":
        message = "too many timestamp_granularities"
    else:
        message = refusal.message
    status = 413 if refusal.reason == "field_too_large" else 400
    return openai_error(status, message, param=refusal.field)


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
    endpoint: Endpoint,
) -> Submitted:
    """Store and probe the audio and create its job exactly as an upload does, with the
    task and fields of `endpoint` (transcriptions or translations)."""
    files = FormFiles(store, settings.max_upload_bytes)
    try:
        try:
            # Unlike the jobs upload form, `timestamp_granularities[]` may repeat.
            form = await read_form(
                multipart_events(boundary_of(content_type), body),
                file_field="file",
                store_file=files.put,
                max_field_bytes=settings.max_form_field_bytes,
                known_fields=endpoint.fields,
                repeatable=endpoint.lists,
                max_repeated=2,
                refuse=_form_error,
            )
        except UnicodeError as exc:
            # python-multipart refuses part headers that are not Latin-1 (e.g. a field name
            # in another script) with this instead of its parse error.
            raise openai_error(400, "malformed multipart part header") from exc
        try:
            request = parse_request(
                form.fields,
                [value.strip() for value in form.repeated],
                settings.openai_models,
                settings.openai_default_model,
                endpoint,
            )
        except InvalidRequest as exc:
            raise openai_error(400, str(exc), param=exc.param) from exc
        blob = form.file
        if blob is None:
            raise openai_error(400, "you must provide a file parameter", param="file")
    except BlobTooLarge as exc:
        raise openai_error(
            413, f"the file exceeds the limit of {exc.limit} bytes", param="file"
        ) from exc
    except BaseException:
        await files.discard(pool)
        raise

    # The caller's custom vocabulary, as for any job (OpenAI's API has no field for it; the
    # user's list alone is within the limits, so the merge cannot fail).
    options = await effective_options(pool, user, request.options)

    async def same_request_job() -> uuid.UUID | None:
        # Same audio as one of the caller's jobs: reuse it only if it was asked for with the
        # same options (a job without word timestamps cannot answer a word-level request).
        # Two identical requests at the same instant may both create a job; both get answers.
        return await repository.find_job_with_options(
            pool, user.sub, blob.sha256, options.model_dump(mode="json")
        )

    admitted = await admit(
        blob,
        form.filename,
        options,
        force=True,
        user=user,
        settings=settings,
        pool=pool,
        store=store,
        empty_file=openai_error(400, "the audio file is empty", param="file", code="empty_file"),
        refuse_audio=_invalid_file_format,
        find_reusable=same_request_job,
    )
    return Submitted(job_id=admitted.job_id, request=request)


def _invalid_file_format(exc: NotAudio | AudioRefused) -> Problem:
    return openai_error(
        400, f"invalid file format: {exc}", param="file", code="invalid_file_format"
    )


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
    """Poll the job until its transcribe stage (and its diarize stage, when it asked for
    speakers) finished or `openai_wait_s` passed. Returns the job view and the transcript
    (None: not ready in time). A failed or cancelled job raises an OpenAI-style error
    carrying its reason."""
    deadline = time.monotonic() + settings.openai_wait_s
    while True:
        view = await get_job_view(pool, settings, user, job_id)
        wanted = (Stage.transcribe, Stage.diarize) if view.options.speakers else (Stage.transcribe,)
        stages = [s for s in view.stages if s.stage in wanted]
        if all(s.state == JobState.done for s in stages):
            transcript = await load_transcript(pool, job_id, view)
            if transcript is not None:
                return view, transcript
        failed = next((s for s in stages if s.state == JobState.failed), None)
        if view.state == JobState.failed or failed is not None:
            raise _job_failed(settings, view, failed)
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


def _job_failed(settings: GatewaySettings, view: JobView, stage: StageView | None) -> Problem:
    error = stage.error if stage else None
    reason = view.error or (f"{stage.stage.value} failed: {error}" if stage and error else None)
    # Work that failed at once was refused for what it is (undecodable audio, a model the
    # transcriber cannot load): the request's fault. Retries exhausted: ours.
    exhausted = stage is not None and stage.attempts >= settings.max_attempts
    return openai_error(
        502 if exhausted else 422,
        reason or "the job failed",
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
    speakers = view.options.speakers
    turns = await jobs_repository.fetch_turns(pool, job_id) if speakers else []
    names = await jobs_repository.fetch_speakers(pool, job_id) if speakers else []
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
        turns=Turns(turns),
        names={r["label"]: r["name"] for r in names},
    )
