"""Entry point of the diarizer: wires settings, runtime, the speaker model and the
audio.uploaded handler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from mxw_shared.audio_source import job_adopter
from mxw_shared.blobs import open_blob_store
from mxw_shared.contracts import AudioUploaded, Stage
from mxw_shared.logging import get_logger
from mxw_shared.pipeline import StageRunner
from mxw_shared.service import ServiceRuntime, health_router, serve
from mxw_shared.telemetry import instrument_app

from mxw_diarizer.handlers import DiarizeWork
from mxw_diarizer.models import SpeakerModel
from mxw_diarizer.settings import DiarizerSettings

log = get_logger(__name__)


class ModelLoader:
    """The speaker model, loaded once in a thread (at start-up, or by the first job when
    preloading is off). Readiness reports a failed load instead of waiting on it."""

    def __init__(self, settings: DiarizerSettings) -> None:
        self.settings = settings
        self.model: asyncio.Future[SpeakerModel] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            model = await asyncio.to_thread(SpeakerModel, self.settings)
        except Exception as exc:
            log.error("speaker model failed to load", error=repr(exc))
            self.model.set_exception(exc)
            return
        log.info("speaker model loaded", model=model.name, device=model.device, s=model.load_s)
        self.model.set_result(model)

    async def check(self) -> None:
        if self.model.done() and self.model.exception() is not None:
            raise RuntimeError(f"speaker model: {self.model.exception()!r}")
        if self.settings.preload_model and not self.model.done():
            raise RuntimeError("speaker model still loading")

    def needed(self) -> asyncio.Future[SpeakerModel]:
        self.start()  # preloading off: the first job loads it
        return self.model


def create_app(settings: DiarizerSettings | None = None) -> FastAPI:
    settings = settings or DiarizerSettings()
    runtime = ServiceRuntime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start_storage()
        loader = ModelLoader(settings)
        if settings.preload_model:
            loader.start()
        store = open_blob_store(settings.blob_root, settings.blob_store_url, readonly=True)
        runner: StageRunner[AudioUploaded] = StageRunner(
            pool=runtime.pool,
            settings=settings,
            stage=Stage.diarize,
            work=DiarizeWork(settings, loader.needed, store),
            adopt_job=job_adopter(store),
        )
        app.state.consumer = runtime.subscribe_stage(
            runner,
            group_id=settings.service_name,
            max_concurrent=settings.max_concurrent_jobs,
            shutdown_grace_s=settings.shutdown_grace_s,
        )
        runtime.ready_checks.append(loader.check)
        try:
            async with runtime.running_stage(Stage.diarize):
                yield
        finally:
            if loader.task is not None:
                # A load in its thread cannot be interrupted; wait for it, it is bounded.
                await asyncio.gather(loader.task, return_exceptions=True)

    app = FastAPI(title="MxWhisper diarizer", lifespan=lifespan)
    app.state.runtime = runtime
    app.include_router(health_router(lambda: runtime))
    instrument_app(app, settings.service_name)  # server spans, joined to each job's trace
    return app


def main() -> None:
    settings = DiarizerSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
