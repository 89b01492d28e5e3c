"""Where a stage that listens gets a job's audio: a blob of the store, or an http(s)://
source fetched through the URL ingest's SSRF guard; and the adoption of jobs that other
systems announce with an audio.uploaded event. The transcriber and the diarizer both start
from that event, and either may be the first to see a job: both adopt it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from mxw_shared import netguard
from mxw_shared.audio import AudioRefused, NotAudio, probe_audio
from mxw_shared.audio_decode import AudioDecodeError, Samples, decode_audio
from mxw_shared.blobs import (
    ALLOWED_AUDIO_CONTENT_TYPES,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    UnsupportedUri,
)
from mxw_shared.contracts import AUDIO_URI_MAX_CHARS, AudioUploaded, Envelope
from mxw_shared.db import Connection
from mxw_shared.jobs import JobRow, get_job
from mxw_shared.logging import get_logger
from mxw_shared.pipeline import AdoptJob, PermanentError
from mxw_shared.settings import AudioSourceSettings

log = get_logger(__name__)

USER_AGENT = "mxwhisper-audio-source/1.0"


def is_http_source(uri: str) -> bool:
    """An http(s):// URL: a source of its own, not a blob of the store. Events of other
    systems may name audio on a web server (contracts.AudioUploaded.audio_uri); it is fetched
    through the URL ingest's SSRF guard (`_download`), which no blob store has."""
    return urlparse(uri).scheme.lower() in ("http", "https")


def _not_readable(uri: str) -> str:
    return f"audio URI {uri!r} is outside the blob store and not an http(s):// source"


@contextlib.asynccontextmanager
async def audio_file(
    uri: str, store: BlobStore, settings: AudioSourceSettings
) -> AsyncIterator[Path]:
    """A local path for the event's audio URI: a blob of the store (its own file, or a
    temporary download), or an http(s):// source downloaded to a temporary file that is
    removed afterwards. PermanentError for sources that retrying cannot fix."""
    if store.owns(uri):
        async with contextlib.AsyncExitStack() as stack:
            try:
                # The timeout covers getting the file (the download), not its use.
                async with asyncio.timeout(settings.download_timeout_s):
                    path = await stack.enter_async_context(
                        store.local_file(uri, settings.download_max_bytes)
                    )
            except (UnsupportedUri, BlobNotFound) as exc:
                raise PermanentError(str(exc)) from exc
            except BlobTooLarge as exc:
                raise PermanentError(f"audio exceeds the limit of {exc.limit} bytes") from exc
            except TimeoutError as exc:
                raise TimeoutError(
                    f"audio download took longer than {settings.download_timeout_s} s"
                ) from exc
            yield path
    elif is_http_source(uri):
        fd, name = tempfile.mkstemp(prefix="mxw-audio-", suffix=".bin")
        path = Path(name)
        try:
            with open(fd, "wb") as fh:  # noqa: ASYNC230  # chunks are written as they arrive
                await _download(uri, fh.write, settings)
            yield path
        finally:
            path.unlink(missing_ok=True)
    else:
        raise PermanentError(_not_readable(uri))


def check_adoptable(event: AudioUploaded, store: BlobStore) -> None:
    """PermanentError when an audio.uploaded event of another system must not become a job:
    its audio lies where this service may not read (a file outside the blob store, an object
    outside the configured S3 store, an unknown scheme), or its content type is not one the
    gateway serves audio with. Checked before the job row exists, so a refused event leaves
    no job whose audio the gateway would then read or delete."""
    uri = event.audio_uri
    if not store.owns(uri) and not is_http_source(uri):
        raise PermanentError(_not_readable(uri))
    if event.content_type is not None and event.content_type not in ALLOWED_AUDIO_CONTENT_TYPES:
        raise PermanentError(f"content type {event.content_type!r} is not an audio type served")


def job_adopter(store: BlobStore) -> AdoptJob[AudioUploaded]:
    """The StageRunner's adoption of jobs announced by other systems: checked, then a row."""

    async def adopt(conn: Connection, envelope: Envelope, event: AudioUploaded) -> JobRow:
        check_adoptable(event, store)
        return await adopt_job(conn, envelope, event)

    return adopt


class AudioDownloadFailed(Exception):
    """The audio server or the connection failed in a way that may pass: retried."""


def fetch_policy(s: AudioSourceSettings) -> netguard.FetchPolicy:
    return netguard.FetchPolicy(
        max_bytes=s.download_max_bytes,
        timeout_s=s.download_timeout_s,
        connect_timeout_s=s.download_connect_timeout_s,
        resolve_timeout_s=s.download_resolve_timeout_s,
        max_redirects=s.download_max_redirects,
        max_url_chars=AUDIO_URI_MAX_CHARS,
        allow_private=s.download_allow_private,
        allowed_networks=tuple(netguard.parse_networks(s.download_allowed_networks)),
        user_agent=USER_AGENT,
    )


async def _download(uri: str, write: Callable[[bytes], object], s: AudioSourceSettings) -> None:
    """The URL ingest's guarded download (mxw_shared.netguard): every hop checked against the
    same SSRF policy, no compressed bodies, the byte limit per chunk. Job errors name no HTTP
    status or address (the event's owner reads them; they would map internal hosts): the
    details go to the log."""
    try:
        async with netguard.fetch(uri, fetch_policy(s)) as fetched:
            async for chunk in fetched.chunks():
                await asyncio.to_thread(write, chunk)
    except netguard.BadUrl as exc:
        raise PermanentError(f"audio URI cannot be fetched: {exc}") from exc
    except netguard.ForbiddenTarget as exc:
        raise PermanentError(f"audio download refused: {exc}") from exc
    except BlobTooLarge as exc:
        raise PermanentError(f"audio download exceeds the limit of {exc.limit} bytes") from exc
    except TimeoutError as exc:
        raise TimeoutError(f"audio download took longer than {s.download_timeout_s} s") from exc
    except netguard.UpstreamError as exc:
        log.warning("audio download failed", uri=uri, error=str(exc), status=exc.status)
        if exc.retriable:
            raise AudioDownloadFailed(
                "audio download failed: the server or the connection failed"
            ) from exc
        if exc.status is not None:
            raise PermanentError("audio download failed: the server refused the request") from exc
        raise PermanentError(f"audio download failed: {exc}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


async def event_audio(
    event: AudioUploaded, store: BlobStore, settings: AudioSourceSettings
) -> tuple[Samples, float]:
    """The event's audio checked against its sha256 and decoded whole (mxw_shared.
    audio_decode), with the seconds the decoding took. PermanentError, with the reason, for
    audio that cannot or may not be used."""
    async with audio_file(event.audio_uri, store, settings) as path:
        await check_sha256(path, event, settings)
        started = time.monotonic()
        with refused_audio():
            samples = await asyncio.to_thread(decode_audio, path, settings.max_audio_seconds)
        return samples, time.monotonic() - started


@contextlib.asynccontextmanager
async def event_audio_path(
    event: AudioUploaded, store: BlobStore, settings: AudioSourceSettings
) -> AsyncIterator[tuple[Path, float]]:
    """The event's audio file, checked against its sha256 and probed (an allowed container
    whose audio decodes, within the duration limit), with its duration: the headers', else
    measured by decoding without keeping the samples. For a caller that decodes it block by
    block (mxw_shared.audio_decode.AudioStream, inside refused_audio()), so memory does not
    grow with its length."""
    async with audio_file(event.audio_uri, store, settings) as path:
        await check_sha256(path, event, settings)
        with refused_audio():
            info = await asyncio.to_thread(probe_audio, path, settings.max_audio_seconds)
        yield path, info.duration_s


@contextlib.contextmanager
def refused_audio() -> Iterator[None]:
    """Audio that cannot be decoded or may not be (too long, a container not allowed) as
    PermanentError with the reason: no retry decodes it."""
    try:
        yield
    except (AudioDecodeError, NotAudio) as exc:
        raise PermanentError(f"audio could not be decoded: {exc}") from exc
    except AudioRefused as exc:
        raise PermanentError(f"audio refused: {exc}") from exc


async def check_sha256(path: Path, event: AudioUploaded, settings: AudioSourceSettings) -> None:
    """PermanentError when the audio's bytes are not the ones the event announced."""
    if settings.verify_sha256:
        actual = await asyncio.to_thread(_sha256, path)
        if actual != event.sha256:
            raise PermanentError(f"audio sha256 {actual} does not match the event's {event.sha256}")


async def adopt_job(conn: Connection, envelope: Envelope, event: AudioUploaded) -> JobRow:
    """A job announced by another system has no row yet: create it from the event. Two
    replicas adopting the same job race harmlessly (ON CONFLICT DO NOTHING)."""
    await conn.execute(
        "INSERT INTO jobs (id, owner_id, filename, audio_uri, sha256, size_bytes, content_type,"
        " options, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (id) DO NOTHING",
        event.job_id,
        event.owner_id,
        event.filename,
        event.audio_uri,
        event.sha256,
        event.size_bytes,
        event.content_type,
        event.options.model_dump(mode="json"),
        envelope.source[:255],
    )
    job = await get_job(conn, event.job_id)
    assert job is not None  # inserted above, or by a racing replica in a committed tx
    return job
