"""Entry point of the chunker: wires settings, runtime and the transcript.ready handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from mxw_shared import topics
from mxw_shared.contracts import Stage, TranscriptReady
from mxw_shared.pipeline import StageRunner
from mxw_shared.service import ServiceRuntime, health_router, serve

from mxw_chunker.handlers import chunk_transcript
from mxw_chunker.settings import ChunkerSettings


def create_app(settings: ChunkerSettings | None = None) -> FastAPI:
    settings = settings or ChunkerSettings()
    runtime = ServiceRuntime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start_storage()
        runner: StageRunner[TranscriptReady] = StageRunner(
            pool=runtime.pool,
            settings=settings,
            stage=Stage.chunk,
            topic=topics.TRANSCRIPT_READY,
            work=chunk_transcript(settings, runtime.pool),
        )
        runtime.subscribe_stage(runner, group_id=settings.service_name)
        await runtime.start_messaging()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="MxWhisper chunker", lifespan=lifespan)
    app.state.runtime = runtime
    app.include_router(health_router(lambda: runtime))
    return app


def main() -> None:
    settings = ChunkerSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
