"""HTTP routes of the jobs module: parse the request, call the service, shape the response."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from mxw_shared.contracts import NO_CONTROL_CHARACTERS, JobState
from mxw_shared.db import Pool
from mxw_shared.problems import PROBLEM_JSON

from mxw_gateway.auth import CurrentUser
from mxw_gateway.deps import BlobStoreDep, CurrentUserDep, PoolDep, SettingsDep
from mxw_gateway.hygiene import RateLimitReprocess, RateLimitUploads
from mxw_gateway.jobs import admission, downloads, lifecycle, speakers, views
from mxw_gateway.jobs.schemas import (
    SPEAKER_LABEL,
    ChunkList,
    JobPage,
    JobView,
    ReprocessRequest,
    SegmentSpeaker,
    SpeakerList,
    SpeakerMerge,
    SpeakerRename,
    SpeakerView,
    TranscriptView,
)
from mxw_gateway.settings import GatewaySettings

router = APIRouter(tags=["jobs"])


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {}}}


_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "model": {"type": "string", "example": "tiny.en"},
                        "language": {"type": "string", "example": "en"},
                        "task": {"type": "string", "enum": ["transcribe", "translate"]},
                        "word_timestamps": {"type": "boolean"},
                        "initial_prompt": {"type": "string"},
                        "decoding": {
                            "type": "string",
                            "enum": ["batched", "sequential"],
                            "description": "How Whisper runs over the audio; unset: the "
                            "transcriber's choice (batched: faster; sequential: each window "
                            "conditioned on the text before).",
                        },
                        "hotwords": {
                            "type": "string",
                            "description": "Names and terms to expect (custom vocabulary), "
                            "separated by commas or new lines; merged with your vocabulary.",
                            "example": "Siobhan, Kubernetes",
                        },
                        "use_vocabulary": {
                            "type": "boolean",
                            "default": True,
                            "description": "Merge your custom vocabulary (GET /vocabulary) "
                            "into the job's hotwords; false: only the job's own.",
                        },
                        "chunking": {"type": "string", "enum": ["auto", "local", "llm"]},
                        "speakers": {
                            "type": "boolean",
                            "description": "Find who spoke when and name it in the transcript.",
                        },
                        "num_speakers": {"type": "integer", "minimum": 1},
                        "min_speakers": {"type": "integer", "minimum": 1},
                        "max_speakers": {"type": "integer", "minimum": 1},
                        "force": {
                            "type": "boolean",
                            "description": "Create a new job even for audio you uploaded before.",
                        },
                    },
                }
            }
        },
    }
}

_UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": JobView, "description": "Same audio as an existing job of yours: that job."},
    202: {"model": JobView, "description": "Stored and queued for transcription."},
    413: _problem("The file is larger than the upload limit."),
    415: _problem("Not multipart, or the file is not decodable audio."),
    422: _problem("Missing file or invalid options."),
}


async def _upload(
    request: Request,
    user: CurrentUserDep,
    settings: SettingsDep,
    pool: PoolDep,
    store: BlobStoreDep,
    force: bool,
) -> JSONResponse:
    result = await admission.upload(
        body=request.stream(),
        content_type=request.headers.get("content-type"),
        content_length=request.headers.get("content-length"),
        force_query=force,
        user=user,
        settings=settings,
        pool=pool,
        store=store,
    )
    headers = {"Location": result.job.links.job}
    if not result.created:
        headers["X-MxW-Duplicate-Of"] = str(result.job.id)
    return JSONResponse(
        result.job.model_dump(mode="json"),
        status_code=202 if result.created else 200,
        headers=headers,
    )


@router.post(
    "/upload",
    status_code=202,
    response_model=JobView,
    responses=_UPLOAD_RESPONSES,
    openapi_extra=_UPLOAD_BODY,
    summary="Upload audio (alias of POST /jobs)",
    operation_id="upload_alias",
    dependencies=[RateLimitUploads],
)
@router.post(
    "/jobs",
    status_code=202,
    response_model=JobView,
    responses=_UPLOAD_RESPONSES,
    openapi_extra=_UPLOAD_BODY,
    summary="Upload audio and start a job",
    operation_id="create_job",
    dependencies=[RateLimitUploads],
)
async def create_job(
    request: Request,
    user: CurrentUserDep,
    settings: SettingsDep,
    pool: PoolDep,
    store: BlobStoreDep,
    force: Annotated[bool, Query(description="Create a new job even for known audio.")] = False,
) -> JSONResponse:
    return await _upload(request, user, settings, pool, store, force)


@dataclass
class JobListQuery:
    """The paging and filters of a job list (GET /jobs, GET /admin/jobs)."""

    limit: Annotated[int | None, Query(ge=1, le=1000)] = None
    cursor: Annotated[str | None, Query(max_length=200)] = None
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0
    state: Annotated[
        list[JobState] | None, Query(description="Only jobs in these states (repeatable).")
    ] = None
    created_from: Annotated[
        datetime | None, Query(description="Created at or after (ISO 8601).")
    ] = None
    created_to: Annotated[datetime | None, Query(description="Created before (ISO 8601).")] = None
    filename: Annotated[
        str | None,
        Query(
            max_length=255,
            pattern=NO_CONTROL_CHARACTERS,
            description="Filename contains (case-insensitive).",
        ),
    ] = None

    async def page(
        self, pool: Pool, settings: GatewaySettings, user: CurrentUser, *, all_users: bool
    ) -> JobPage:
        size = min(self.limit or settings.jobs_default_page_size, settings.jobs_max_page_size)
        return await views.list_jobs(
            pool,
            settings,
            user,
            limit=size,
            cursor=self.cursor,
            offset=self.offset,
            all_users=all_users,
            states=self.state,
            created_from=self.created_from,
            created_to=self.created_to,
            filename=self.filename,
        )


JobListQueryDep = Annotated[JobListQuery, Depends()]


@router.get("/jobs", response_model=JobPage, summary="Your jobs, newest first")
async def list_jobs(
    user: CurrentUserDep,
    settings: SettingsDep,
    pool: PoolDep,
    query: JobListQueryDep,
    all: Annotated[bool, Query(description="Admins only: every user's jobs.")] = False,
) -> JobPage:
    return await query.page(pool, settings, user, all_users=all)


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _problem("No such job (or not yours).")}


@router.get("/jobs/{job_id}", response_model=JobView, responses=_NOT_FOUND)
async def get_job(
    job_id: uuid.UUID, user: CurrentUserDep, settings: SettingsDep, pool: PoolDep
) -> JobView:
    return await views.get_job_view(pool, settings, user, job_id)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobView,
    responses={**_NOT_FOUND, 409: _problem("The job already finished.")},
)
async def cancel_job(
    job_id: uuid.UUID, user: CurrentUserDep, settings: SettingsDep, pool: PoolDep
) -> JobView:
    return await lifecycle.cancel_job(pool, settings, user, job_id)


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    responses={**_NOT_FOUND, 409: _problem("The job is still running: cancel it first.")},
    summary="Delete a finished job with its audio, transcript, chunks and vectors",
)
async def delete_job(
    job_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep, store: BlobStoreDep
) -> Response:
    await lifecycle.delete_job(pool, store, user, job_id)
    return Response(status_code=204)


@router.post(
    "/jobs/{job_id}/reprocess",
    status_code=202,
    response_model=JobView,
    responses={
        **_NOT_FOUND,
        409: _problem(
            "The job is still running, an earlier stage is not done, or transcribing again "
            "would discard corrections of its transcript (send discard_edits)."
        ),
        422: _problem("Invalid stage or options."),
        429: _problem("Reprocess rate limit reached (Retry-After)."),
    },
    dependencies=[RateLimitReprocess],
    summary="Run a finished job again from a stage (e.g. re-chunk without re-transcribing)",
)
async def reprocess_job(
    job_id: uuid.UUID,
    request: ReprocessRequest,
    user: CurrentUserDep,
    settings: SettingsDep,
    pool: PoolDep,
) -> JobView:
    return await lifecycle.reprocess_job(
        pool,
        settings,
        user,
        job_id,
        request.from_stage,
        request.options,
        use_vocabulary=request.use_vocabulary,
        discard_edits=request.discard_edits,
    )


_NOT_TRANSCRIBED: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: _problem("Not transcribed yet."),
}


TranscriptFormat = Literal["json", "txt", "srt", "vtt"]
_TRANSCRIPT_CONTENT: dict[int | str, dict[str, Any]] = {
    **_NOT_TRANSCRIBED,
    200: {
        "description": "The transcript: JSON (segments, and words when recorded), plain "
        "text, SubRip or WebVTT.",
        "content": {"text/plain": {}, "application/x-subrip": {}, "text/vtt": {}},
    },
}


def _rendered(
    transcript: TranscriptView, fmt: TranscriptFormat, job_id: uuid.UUID, disposition: str
) -> Response:
    body, media_type = downloads.render_transcript(transcript, fmt)
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'{disposition}; filename="{job_id}.{fmt}"'},
    )


@router.get(
    "/jobs/{job_id}/transcript",
    response_model=TranscriptView,
    responses=_TRANSCRIPT_CONTENT,
    summary="The transcript, as JSON (default), txt, srt or vtt",
)
async def get_transcript(
    job_id: uuid.UUID,
    response: Response,
    user: CurrentUserDep,
    pool: PoolDep,
    format: Annotated[TranscriptFormat, Query()] = "json",
) -> TranscriptView | Response:
    tagged = await views.get_tagged_transcript(pool, user, job_id)
    if format == "json":
        # The tag an edit sends back in If-Match (edits/routes.py).
        response.headers["ETag"] = tagged.etag
        return tagged.view
    return _rendered(tagged.view, format, job_id, "inline")


@router.get(
    "/jobs/{job_id}/transcript.txt",
    response_class=PlainTextResponse,
    responses={**_NOT_TRANSCRIBED, 200: {"content": {"text/plain": {}}}},
)
async def get_transcript_text(job_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep) -> Response:
    transcript = await views.get_transcript(pool, user, job_id)
    return _rendered(transcript, "txt", job_id, "inline")


@router.get(
    "/jobs/{job_id}/download",
    response_class=Response,
    responses=_TRANSCRIPT_CONTENT,
    summary="Download the transcript as a file (txt by default)",
)
async def download_transcript(
    job_id: uuid.UUID,
    user: CurrentUserDep,
    pool: PoolDep,
    format: Annotated[TranscriptFormat, Query()] = "txt",
) -> Response:
    transcript = await views.get_transcript(pool, user, job_id)
    return _rendered(transcript, format, job_id, "attachment")


@router.get(
    "/jobs/{job_id}/chunks",
    response_model=ChunkList,
    responses=_NOT_FOUND,
    summary="The job's topic chunks with their timestamps",
)
async def get_chunks(job_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep) -> ChunkList:
    return await views.get_chunks(pool, user, job_id)


_SPEAKER_WRITE: dict[int | str, dict[str, Any]] = {
    404: _problem("No such job (or not yours), or no such speaker or segment."),
    409: _problem("The job did not ask for speakers, or they are still being found."),
    422: _problem("Invalid name, labels or times."),
}


@router.get(
    "/jobs/{job_id}/speakers",
    response_model=SpeakerList,
    responses=_NOT_FOUND,
    summary="The job's speakers: labels, names and talk time",
)
async def list_speakers(job_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep) -> SpeakerList:
    return await speakers.list_speakers(pool, user, job_id)


@router.patch(
    "/jobs/{job_id}/speakers/{label}",
    response_model=SpeakerView,
    responses=_SPEAKER_WRITE,
    summary="Name a speaker (shown in the transcript, its downloads and the web page)",
)
async def rename_speaker(
    job_id: uuid.UUID,
    label: Annotated[str, Path(pattern=SPEAKER_LABEL)],
    body: SpeakerRename,
    user: CurrentUserDep,
    pool: PoolDep,
) -> SpeakerView:
    return await speakers.rename(pool, user, job_id, label, body.name)


@router.post(
    "/jobs/{job_id}/speakers/merge",
    response_model=SpeakerList,
    responses=_SPEAKER_WRITE,
    summary="Merge a speaker into another (one voice found as two)",
)
async def merge_speakers(
    job_id: uuid.UUID, body: SpeakerMerge, user: CurrentUserDep, pool: PoolDep
) -> SpeakerList:
    return await speakers.merge(pool, user, job_id, body.from_label, body.into)


@router.put(
    "/jobs/{job_id}/segments/{idx}/speaker",
    response_model=SpeakerList,
    responses=_SPEAKER_WRITE,
    summary="Give a segment, or part of it, to another speaker (existing or new)",
)
async def move_segment(
    job_id: uuid.UUID,
    idx: Annotated[int, Path(ge=0, le=10_000_000)],
    body: SegmentSpeaker,
    user: CurrentUserDep,
    pool: PoolDep,
    settings: SettingsDep,
    if_match: Annotated[
        str | None,
        Header(
            description="Optional: the transcript's ETag; 412 when it changed.", max_length=1000
        ),
    ] = None,
) -> SpeakerList:
    return await speakers.move_segment(pool, settings, user, job_id, idx, body, if_match)


@router.get(
    "/jobs/{job_id}/audio",
    response_class=FileResponse,
    responses={
        **_NOT_FOUND,
        200: {"content": {"audio/*": {}}, "description": "The audio; HTTP Range supported."},
        206: {"description": "Partial content (Range)."},
        416: _problem("The Range starts past the end of the audio."),
    },
    summary="Stream the job's audio (append #t=<seconds> to play from a point)",
)
async def get_audio(
    job_id: uuid.UUID,
    request: Request,
    user: CurrentUserDep,
    pool: PoolDep,
    store: BlobStoreDep,
) -> Response:
    audio = await downloads.audio_file(pool, store, user, job_id)
    # Streamed through the gateway from whichever store holds it (auth and scoping stay
    # here, and an S3 bucket need not be reachable by browsers); a Range is one ranged read,
    # so players seek.
    range_header = request.headers.get("range")
    size, served, chunks = await downloads.open_audio(store, audio.uri, range_header)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": _inline_disposition(audio.filename),
    }
    if served is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(chunks, media_type=audio.content_type, headers=headers)
    start, end = served
    headers["Content-Length"] = str(end - start)
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(
        chunks, status_code=206, media_type=audio.content_type, headers=headers
    )


def _inline_disposition(filename: str | None) -> str:
    """As FileResponse writes it: RFC 5987 encoding when the name is not plain ASCII."""
    if not filename:
        return "inline"
    quoted = quote(filename)
    if quoted != filename:
        return f"inline; filename*=utf-8''{quoted}"
    return f'inline; filename="{filename}"'
