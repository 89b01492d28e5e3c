"""Entry point of the chunker: wires settings, runtime and the transcript.ready and
transcript.edited handlers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from mxw_shared import topics
from mxw_shared.contracts import Stage, TranscriptEdited, TranscriptReady
from mxw_shared.logging import get_logger
from mxw_shared.pipeline import StageRunner
from mxw_shared.service import ServiceRuntime, health_router, serve
from mxw_shared.telemetry import instrument_app

from mxw_chunker.domain import Vectors
from mxw_chunker.embeddings import SegmentEmbedder, load_segment_embedder
from mxw_chunker.handlers import chunk_transcript, recut_after_edit
from mxw_chunker.methods import Chunker
from mxw_chunker.settings import ChunkerSettings

log = get_logger(__name__)


class LazyEmbedder:
    """The segment-embedding model, preloaded in a thread at start-up so the service is
    up at once; a job arriving before the load finished waits for it. Readiness reports a
    failed load."""

    def __init__(self, settings: ChunkerSettings) -> None:
        self._settings = settings
        self._model: SegmentEmbedder | None = None
        self._lock = threading.Lock()
        self.error: str | None = None

    def load(self) -> SegmentEmbedder:
        with self._lock:
            if self._model is None:
                s = self._settings
                try:
                    self._model = load_segment_embedder(
                        s.embedding_model, s.embedding_device, s.embedding_max_tokens
                    )
                    self.error = None
                except Exception as exc:
                    self.error = f"embedding model {s.embedding_model!r}: {exc}"
                    raise
            return self._model

    def __call__(self, texts: Sequence[str]) -> Vectors:
        return self.load()(texts)

    def static(self, texts: Sequence[str]) -> Vectors:
        return self.load().static(texts)

    async def preload(self) -> None:
        try:
            await asyncio.to_thread(self.load)
        except Exception:
            log.error("embedding model preload failed", error=self.error)

    async def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(self.error)


def create_app(settings: ChunkerSettings | None = None) -> FastAPI:
    settings = settings or ChunkerSettings()
    runtime = ServiceRuntime(settings)
    embedder = LazyEmbedder(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start_storage()
        preload = asyncio.create_task(embedder.preload())
        chunker = Chunker(settings, embedder, embedder.static)
        runner: StageRunner[TranscriptReady] = StageRunner(
            pool=runtime.pool,
            settings=settings,
            stage=Stage.chunk,
            work=chunk_transcript(chunker, runtime.pool),
        )
        runtime.subscribe_stage(runner, group_id=settings.service_name)
        # A person's edit re-cuts only the chunks over the audio it touched: the same stage
        # from its second topic, in the same consumer group.
        edits: StageRunner[TranscriptEdited] = StageRunner(
            pool=runtime.pool,
            settings=settings,
            stage=Stage.chunk,
            work=recut_after_edit(chunker, runtime.pool),
            topic=topics.TRANSCRIPT_EDITED,
        )
        runtime.subscribe_stage(edits, group_id=settings.service_name)
        runtime.ready_checks.append(embedder.check)
        try:
            async with runtime.running_stage(Stage.chunk):
                yield
        finally:
            await chunker.aclose()
            # A load in its thread cannot be interrupted; wait for it, it is bounded.
            with contextlib.suppress(Exception):
                await preload

    app = FastAPI(title="MxWhisper chunker", lifespan=lifespan)
    app.state.runtime = runtime
    app.include_router(health_router(lambda: runtime))
    instrument_app(app, settings.service_name)  # server spans, joined to each job's trace
    return app


def main() -> None:
    settings = ChunkerSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
