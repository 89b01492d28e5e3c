"""What the jobs module hands out as files: a job's stored audio (whole or a byte range)
and its transcript rendered as json, txt, srt or vtt."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mxw_shared.blobs import (
    ALLOWED_AUDIO_CONTENT_TYPES,
    UNKNOWN_AUDIO_TYPE,
    BlobNotFound,
    BlobStore,
)
from mxw_shared.db import Pool
from mxw_shared.problems import Problem
from mxw_shared.speakers import default_name

from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs import subtitles
from mxw_gateway.jobs.domain import RangeNotSatisfiable, parse_byte_range
from mxw_gateway.jobs.schemas import TranscriptSegment, TranscriptView
from mxw_gateway.jobs.views import load_owned_job


def speaker_voice(transcript: TranscriptView) -> subtitles.Voice[TranscriptSegment] | None:
    """Who says a segment, by name; None for a job that did not ask for speakers."""
    if transcript.speakers is None:
        return None
    names = {s.label: s.name for s in transcript.speakers}

    def voice(segment: TranscriptSegment) -> str | None:
        if segment.speaker is None:
            return None
        return names.get(segment.speaker) or default_name(segment.speaker)

    return voice


def render_transcript(transcript: TranscriptView, fmt: str) -> tuple[str, str]:
    """(body, media type) of the transcript in `fmt`: json, txt, srt or vtt."""
    if fmt == "json":
        return transcript.model_dump_json(), "application/json"
    segments, voice = transcript.segments, speaker_voice(transcript)
    if fmt == "srt":
        return subtitles.to_srt(segments, voice), "application/x-subrip; charset=utf-8"
    if fmt == "vtt":
        return subtitles.to_vtt(segments, voice), "text/vtt; charset=utf-8"
    return subtitles.to_text(segments, transcript.text, voice), "text/plain; charset=utf-8"


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
