"""audio.uploaded → transcript.ready."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlparse

import httpx
from mxw_shared.blobs import UnsupportedUri, local_path
from mxw_shared.contracts import AudioUploaded, Envelope, TranscriptReady
from mxw_shared.db import Connection
from mxw_shared.jobs import JobRow
from mxw_shared.logging import get_logger
from mxw_shared.pipeline import JobCancelled, PermanentError, Progress, StageOutcome, StageWork

from mxw_transcriber import repository
from mxw_transcriber.domain import (
    AudioDecodeError,
    DecodeSettings,
    UnsupportedOptions,
    check_options,
    decode_audio,
    transcribe,
)
from mxw_transcriber.models import ModelRegistry
from mxw_transcriber.settings import TranscriberSettings

log = get_logger(__name__)
_PROGRESS_WAIT_S = 30.0


@contextlib.asynccontextmanager
async def audio_file(uri: str, settings: TranscriberSettings) -> AsyncIterator[Path]:
    """A local path for the event's audio URI; downloads http(s):// to a temporary file that
    is removed afterwards. PermanentError for sources that retrying cannot fix."""
    scheme = urlparse(uri).scheme.lower()
    if scheme == "file":
        try:
            path = local_path(uri).resolve()
        except UnsupportedUri as exc:
            raise PermanentError(str(exc)) from exc
        # Only the blob store: an event must not make this service read arbitrary files.
        if not path.is_relative_to(settings.blob_root.resolve()):
            raise PermanentError(f"audio URI {uri!r} is outside the blob store")
        if not path.is_file():
            raise PermanentError(f"audio not found at {uri!r}")
        yield path
    elif scheme in ("http", "https"):
        fd, name = tempfile.mkstemp(prefix="mxw-audio-", suffix=".bin")
        path = Path(name)
        try:
            with open(fd, "wb") as fh:  # noqa: ASYNC230  # chunks are written as they arrive
                await _download(uri, fh.write, settings)
            yield path
        finally:
            path.unlink(missing_ok=True)
    else:
        raise PermanentError(f"unsupported audio URI scheme {scheme or '(none)'!r}: {uri!r}")


async def _download(uri: str, write: Callable[[bytes], object], s: TranscriberSettings) -> None:
    timeout = httpx.Timeout(30.0, read=60.0)
    size = 0
    try:
        async with (
            asyncio.timeout(s.download_timeout_s),
            httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client,
            client.stream("GET", uri) as response,
        ):
            if 400 <= response.status_code < 500:
                raise PermanentError(f"audio download failed: HTTP {response.status_code}")
            response.raise_for_status()  # 5xx: retried
            async for chunk in response.aiter_bytes(1024 * 1024):
                size += len(chunk)
                if size > s.download_max_bytes:
                    raise PermanentError(
                        f"audio download exceeds the limit of {s.download_max_bytes} bytes"
                    )
                await asyncio.to_thread(write, chunk)
    except TimeoutError as exc:
        raise TimeoutError(f"audio download took longer than {s.download_timeout_s} s") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def transcribe_audio(
    settings: TranscriberSettings, registry: ModelRegistry
) -> StageWork[AudioUploaded]:
    decode_settings = DecodeSettings(beam_size=settings.beam_size, vad_filter=settings.vad_filter)

    async def work(
        envelope: Envelope, event: AudioUploaded, job: JobRow, progress: Progress
    ) -> StageOutcome:
        options = event.options
        model_name = options.model or settings.default_model
        # The model first: an unknown model fails the job at once, before any download.
        was_cached = registry.cached(model_name) is not None
        loaded = await asyncio.to_thread(registry.load, model_name)
        try:
            check_options(options, loaded.multilingual, model_name)
        except UnsupportedOptions as exc:
            raise PermanentError(str(exc)) from exc

        loop = asyncio.get_running_loop()
        last_report = 0.0

        def report(fraction: float) -> None:
            """Runs in the worker thread: hands the report to the event loop and waits, so
            a JobCancelled raised there stops the transcription here."""
            nonlocal last_report
            now = time.monotonic()
            if now - last_report < settings.progress_interval_s and fraction < 1.0:
                return
            last_report = now
            future = asyncio.run_coroutine_threadsafe(
                progress(fraction, f"transcribed {fraction:.0%}"), loop
            )
            try:
                future.result(timeout=_PROGRESS_WAIT_S)
            except JobCancelled:
                raise
            except Exception as exc:  # includes concurrent.futures.TimeoutError
                # A lost progress report is not worth losing the transcription for.
                log.warning("progress report failed", job_id=str(job.id), error=repr(exc))

        async with audio_file(event.audio_uri, settings) as path:
            if settings.verify_sha256:
                actual = await asyncio.to_thread(_sha256, path)
                if actual != event.sha256:
                    raise PermanentError(
                        f"audio sha256 {actual} does not match the event's {event.sha256}"
                    )
            started = time.monotonic()
            try:
                audio = await asyncio.to_thread(decode_audio, path)
            except AudioDecodeError as exc:
                raise PermanentError(f"audio could not be decoded: {exc}") from exc
            decode_s = time.monotonic() - started

        started = time.monotonic()
        transcript = await asyncio.to_thread(
            transcribe, loaded.model, audio, options, decode_settings, report
        )
        transcribe_s = time.monotonic() - started

        async def persist(conn: Connection) -> None:
            await repository.replace_transcript(conn, job.id, model_name, transcript)

        count = len(transcript.segments)
        duration = transcript.duration_s
        return StageOutcome(
            persist=persist,
            next_event=TranscriptReady(
                job_id=job.id,
                owner_id=job.owner_id,
                segment_count=count,
                duration_s=duration,
                language=transcript.language,
                model=model_name,
                options=options,
            ),
            message=(
                f"{count} segments, {duration:.1f} s of audio"
                + (f", language {transcript.language}" if transcript.language else "")
                + f", model {model_name}"
            ),
            metrics={
                "model": model_name,
                "model_source": loaded.source,
                "model_load_s": 0.0 if was_cached else loaded.load_s,
                "device": loaded.device,
                "compute_type": loaded.compute_type,
                "audio_duration_s": duration,
                "decode_s": round(decode_s, 3),
                "transcribe_s": round(transcribe_s, 3),
                "real_time_factor": round(transcribe_s / duration, 4) if duration else None,
                "language": transcript.language,
                "language_probability": transcript.language_probability,
                "segments": count,
                "task": options.task.value,
                "word_timestamps": options.word_timestamps,
            },
        )

    return work
