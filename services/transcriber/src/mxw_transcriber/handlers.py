"""audio.uploaded → transcript.ready."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mxw_shared import metrics, telemetry
from mxw_shared.audio_decode import AudioStream, Samples
from mxw_shared.audio_source import event_audio_path, refused_audio
from mxw_shared.blobs import (
    BlobStore,
)
from mxw_shared.contracts import AudioUploaded, Decoding, Envelope, TranscriptReady
from mxw_shared.db import Connection, Pool
from mxw_shared.jobs import JobRow
from mxw_shared.logging import get_logger
from mxw_shared.pipeline import (
    JobCancelled,
    PermanentError,
    Progress,
    StageOutcome,
    StageTakenOver,
)

from mxw_transcriber import repository
from mxw_transcriber.domain import (
    DecodeSettings,
    Resume,
    Transcript,
    TranscriptSegment,
    UnsupportedOptions,
    check_options,
    choose_decoding,
    transcribe,
)
from mxw_transcriber.models import ModelRegistry
from mxw_transcriber.repository import Checkpoint
from mxw_transcriber.settings import TranscriberSettings

log = get_logger(__name__)


def decode_settings(settings: TranscriberSettings) -> DecodeSettings:
    return DecodeSettings(
        beam_size=settings.beam_size,
        vad_filter=settings.vad_filter,
        batch_size=settings.batch_size,
        decoding=settings.decoding,
        batched_for=frozenset(settings.batched_for),
        window_s=settings.window_s,
    )


def run_fingerprint(
    job: JobRow, event: AudioUploaded, model_name: str, decode: DecodeSettings
) -> str:
    """Identifies a run: a partial transcript is resumed only by the same audio, model,
    options, decoding settings and job generation; anything else starts over."""
    parts = {
        "generation": job.generation,
        "sha256": event.sha256,
        "model": model_name,
        "options": event.options.model_dump(mode="json"),
        "decode": dataclasses.asdict(decode),
    }
    encoded = json.dumps(parts, sort_keys=True, default=sorted)  # sets as sorted lists
    return hashlib.sha256(encoded.encode()).hexdigest()[:32]


@dataclasses.dataclass
class _Run:
    """State of one transcription shared by the worker thread and the writer task."""

    pieces: asyncio.Queue[tuple[TranscriptSegment | None, float] | None]
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    cancelled: bool = False
    lease_lost: bool = False
    produced: list[TranscriptSegment] = dataclasses.field(default_factory=list)
    written: int = 0  # how many of `produced` are persisted
    position_s: float = 0.0
    flushes: int = 0


class TranscribeWork:
    """The stage's work for one audio.uploaded event (a StageWork).

    The transcription runs in a thread; each segment is handed to a writer task on the
    event loop, which persists it in its own short transaction (with the position reached)
    and reports progress, so the thread never waits on the database. A restarted run of the
    same job resumes after the last persisted segment; a cancelled job keeps its partial
    transcript (complete = false)."""

    def __init__(
        self,
        settings: TranscriberSettings,
        registry: ModelRegistry,
        pool: Pool,
        store: BlobStore,
    ) -> None:
        self.settings = settings
        self.store = store  # built once at start-up (main.py), read for every job
        self.registry = registry
        self.pool = pool
        self.decode = decode_settings(settings)

    async def __call__(
        self, envelope: Envelope, event: AudioUploaded, job: JobRow, progress: Progress
    ) -> StageOutcome:
        settings = self.settings
        queue_wait_s = max(0.0, (datetime.now(UTC) - envelope.time).total_seconds())
        options = event.options
        model_name = options.model or settings.default_model
        # The model first: an unknown model fails the job at once, before any download.
        was_cached = self.registry.cached(model_name) is not None
        loaded = await asyncio.to_thread(self.registry.load, model_name)
        try:
            check_options(options, loaded.multilingual, model_name)
        except UnsupportedOptions as exc:
            raise PermanentError(str(exc)) from exc

        async with event_audio_path(event, self.store, settings) as (path, expected_s):
            duration = round(expected_s, 3)  # the headers' or measured; exact once decoded
            fingerprint = run_fingerprint(job, event, model_name, self.decode)
            resumable: list[Checkpoint] = []

            async def begin(conn: Connection) -> None:
                """Resume this run's checkpoint, or open an empty partial transcript."""
                found = await repository.load_checkpoint(conn, job.id, fingerprint)
                if found is None:
                    await repository.start_partial(conn, job.id, model_name, duration, fingerprint)
                else:
                    resumable.append(found)

            if not await progress.checkpoint(begin):
                raise StageTakenOver(f"job {job.id}")
            checkpoint = resumable[0] if resumable else None
            earlier: tuple[TranscriptSegment, ...] = ()
            resume: Resume | None = None
            if checkpoint is not None and checkpoint.position_s > 0:
                earlier = checkpoint.segments
                resume = Resume(
                    start_s=checkpoint.position_s,
                    next_idx=len(earlier),
                    language=checkpoint.language,
                    language_probability=checkpoint.language_probability,
                )
                log.info(
                    "transcription resumed",
                    job_id=str(job.id),
                    position_s=checkpoint.position_s,
                    segments=len(earlier),
                )

            loop = asyncio.get_running_loop()
            run = _Run(pieces=asyncio.Queue(), position_s=resume.start_s if resume else 0.0)
            language: list[tuple[str | None, float | None]] = []

            def on_language(code: str | None, probability: float | None) -> None:
                language.append((code, probability))

            def on_segment(segment: TranscriptSegment | None, position_s: float) -> None:
                # Worker thread: never waits; stops at the next segment once told to.
                if run.stop.is_set():
                    raise _Stopped
                loop.call_soon_threadsafe(run.pieces.put_nowait, (segment, position_s))

            writer = asyncio.create_task(
                self._write(run, job, fingerprint, duration, progress, language),
                name=f"segments:{job.id}",
            )
            started = time.monotonic()
            error: BaseException | None = None
            transcript: Transcript | None = None
            decode_s = 0.0
            try:
                with telemetry.span("whisper.transcribe", model=model_name, device=loaded.device):
                    transcript, decode_s = await asyncio.to_thread(
                        transcribe_file,
                        loaded.model,
                        path,
                        settings.max_audio_seconds,
                        options,
                        self.decode,
                        resume=resume,
                        on_language=on_language,
                        on_segment=on_segment,
                        expected_s=expected_s,
                        model_name=model_name,
                    )
            except _Stopped:
                pass
            except BaseException as exc:
                error = exc
            finally:
                run.stop.set()  # a cancelled await leaves the thread running: stop it too
                run.pieces.put_nowait(None)
                with contextlib.suppress(Exception):
                    await writer
        transcribe_s = time.monotonic() - started
        if error is not None:
            raise error
        if run.lease_lost:
            raise StageTakenOver(f"job {job.id}")

        if transcript is None or run.cancelled:
            # Cancelled: keep what was transcribed, marked incomplete.
            code, probability = language[0] if language else (None, None)
            produced = tuple(run.produced)
            partial = Transcript(code, probability, duration, earlier + produced)
            unsaved = produced[run.written :]
            async with self.pool.acquire() as conn, conn.transaction():
                await repository.finish_transcript(
                    conn, job.id, model_name, partial, unsaved, complete=False
                )
            log.info("transcription cancelled", job_id=str(job.id), segments=len(partial.segments))
            raise JobCancelled

        segments = earlier + transcript.segments
        final = dataclasses.replace(transcript, segments=segments)
        duration = final.duration_s  # counted while decoding
        decoding = choose_decoding(options, model_name, final.language, self.decode)
        unwritten = transcript.segments[run.written :]  # what the writer did not persist
        model_label = model_name

        async def persist(conn: Connection) -> None:
            await repository.finish_transcript(
                conn, job.id, model_label, final, unwritten, complete=True
            )

        count = len(segments)
        transcribed_s = duration - (resume.start_s if resume else 0.0)
        if transcribed_s > 0:
            metrics.REALTIME_FACTOR.labels(model_name, loaded.device).observe(
                transcribe_s / transcribed_s
            )
            metrics.AUDIO_SECONDS.labels(model_name).inc(transcribed_s)
        return StageOutcome(
            persist=persist,
            next_event=TranscriptReady(
                job_id=job.id,
                owner_id=job.owner_id,
                segment_count=count,
                duration_s=duration,
                language=final.language,
                model=model_name,
                options=options,
            ),
            message=(
                f"{count} segments, {duration:.1f} s of audio"
                + (f", language {final.language}" if final.language else "")
                + f", model {model_name}"
            ),
            metrics={
                "model": model_name,
                "model_source": loaded.source,
                "model_load_s": 0.0 if was_cached else loaded.load_s,
                "device": loaded.device,
                "compute_type": loaded.compute_type,
                "beam_size": self.decode.beam_size,
                "decoding": decoding.value,
                "vad_filter": self.decode.vad_filter or decoding == Decoding.batched,
                "batch_size": self.decode.batch_size if decoding == Decoding.batched else None,
                "window_s": self.decode.window_s,
                "hotwords": len(options.hotwords),
                "queue_wait_s": round(queue_wait_s, 3),
                "audio_duration_s": duration,
                "transcribe_s": round(transcribe_s, 3),
                # Of which decoding the file (done window by window, inside transcribe_s).
                "decode_s": round(decode_s, 3),
                # Seconds of compute per second of audio transcribed by this run.
                "real_time_factor": (
                    round(transcribe_s / transcribed_s, 4) if transcribed_s > 0 else None
                ),
                "resumed_from_s": resume.start_s if resume else None,
                "resumed_segments": len(earlier),
                "segment_writes": run.flushes,
                "language": final.language,
                "language_probability": final.language_probability,
                "segments": count,
                "task": options.task.value,
                "word_timestamps": options.word_timestamps,
                "checkpoint": None,
            },
        )

    async def _write(
        self,
        run: _Run,
        job: JobRow,
        fingerprint: str,
        duration: float,
        progress: Progress,
        language: list[tuple[str | None, float | None]],
    ) -> None:
        """Writer task: persists segments as they arrive, batching whatever queued up while
        the previous write ran; checks for cancellation (also when no segment comes)."""
        language_saved = False
        done = False
        reported_s = run.position_s
        while not done:
            items: list[tuple[TranscriptSegment | None, float] | None] = []
            with contextlib.suppress(TimeoutError):
                items.append(
                    await asyncio.wait_for(
                        run.pieces.get(), timeout=max(self.settings.progress_interval_s, 1.0)
                    )
                )
            while not run.pieces.empty():
                items.append(run.pieces.get_nowait())
            for piece in items:
                if piece is None:
                    done = True
                    continue
                segment, position = piece
                if segment is not None:
                    run.produced.append(segment)
                run.position_s = max(run.position_s, position)
            if run.cancelled or run.lease_lost:
                continue  # the cancelled run's last write happens in the work itself
            pending = run.produced[run.written :]
            saving_language = language[0] if language and not language_saved else None
            write = _partial_write(job, fingerprint, run.position_s, pending, saving_language)
            try:
                # The segments so far and the resume point, while this worker holds the
                # stage (the row stays locked: no takeover can interleave with the write).
                held = await progress.checkpoint(write)
            except JobCancelled:
                run.cancelled = True
                run.stop.set()
                continue
            except Exception as exc:  # the final commit writes whatever is left
                log.warning("segment write failed", job_id=str(job.id), error=repr(exc))
                continue
            if not held:
                run.lease_lost = True
                run.stop.set()  # another worker transcribes this job now
                continue
            language_saved = language_saved or saving_language is not None
            if pending:
                run.written += len(pending)
                run.flushes += 1
            if run.cancelled or run.position_s <= reported_s:
                continue
            reported_s = run.position_s
            fraction = min(run.position_s / duration, 1.0) if duration else 1.0
            try:
                await progress(fraction, f"transcribed {run.position_s:.0f} of {duration:.0f} s")
            except JobCancelled:
                run.cancelled = True
                run.stop.set()
            except Exception as exc:  # a lost progress report is not worth the job
                log.warning("progress report failed", job_id=str(job.id), error=repr(exc))


def _partial_write(
    job: JobRow,
    fingerprint: str,
    position_s: float,
    segments: list[TranscriptSegment],
    language: tuple[str | None, float | None] | None,
) -> Callable[[Connection], Awaitable[None]]:
    """The writes of one checkpoint: the language once known, new segments, the position."""

    async def write(conn: Connection) -> None:
        if language is not None:
            await repository.set_language(conn, job.id, *language)
        if segments:
            await repository.write_segments(conn, job.id, segments)
            await repository.save_position(conn, job.id, fingerprint, position_s)

    return write


def transcribe_file(
    model: Any, path: Path, max_seconds: float, *args: Any, **kwargs: Any
) -> tuple[Transcript, float]:
    """transcribe() over the file decoded block by block, and the seconds spent decoding.
    The thread owns the open file, so a stopped or abandoned run closes it itself."""
    decode_s = 0.0

    def timed(blocks: Iterator[Samples]) -> Iterator[Samples]:
        nonlocal decode_s
        while True:
            started = time.perf_counter()
            block = next(blocks, None)
            decode_s += time.perf_counter() - started
            if block is None:
                return
            yield block

    with refused_audio(), AudioStream(path, max_seconds) as audio:
        transcript = transcribe(model, timed(iter(audio)), *args, **kwargs)
    return transcript, decode_s


class _Stopped(Exception):
    """Raised in the worker thread to stop at the next segment."""
