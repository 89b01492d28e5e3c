"""Entry point of the transcriber: wires settings, runtime, models and the audio.uploaded
handler."""

from __future__ import annotations

import asyncio
import contextlib
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

from mxw_transcriber.handlers import TranscribeWork
from mxw_transcriber.models import ModelRegistry
from mxw_transcriber.settings import TranscriberSettings

log = get_logger(__name__)


class DefaultModel:
    """The default model, preloaded in a thread at start-up. Readiness reports a failed
    preload instead of waiting on it forever; jobs still load on demand."""

    def __init__(self, registry: ModelRegistry, name: str) -> None:
        self.registry = registry
        self.name = name
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def preload(self) -> None:
        try:
            await asyncio.to_thread(self.registry.load, self.name)
            self.error = None
        except Exception as exc:
            self.error = str(exc)
            log.error("default model preload failed", model=self.name, error=self.error)

    async def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"default model: {self.error}")
        if self.registry.cached(self.name) is None:
            # Not preloaded (still loading, or preload off): it must at least resolve.
            await asyncio.to_thread(self.registry.resolve, self.name)


def create_app(settings: TranscriberSettings | None = None) -> FastAPI:
    settings = settings or TranscriberSettings()
    runtime = ServiceRuntime(settings)
    registry = ModelRegistry(
        settings.model_cache_dir,
        settings.device,
        settings.compute_type,
        settings.cpu_threads,
        allowed=settings.allowed_models,
    )
    default_model = DefaultModel(registry, settings.default_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start_storage()
        if settings.preload_default_model:
            default_model.task = asyncio.create_task(default_model.preload())
        # One store for every job: the blob directory (read-only here), and the S3 bucket
        # when MXW_BLOB_STORE_URL names one.
        store = open_blob_store(settings.blob_root, settings.blob_store_url, readonly=True)
        work = TranscribeWork(settings, registry, runtime.pool, store)
        runner: StageRunner[AudioUploaded] = StageRunner(
            pool=runtime.pool,
            settings=settings,
            stage=Stage.transcribe,
            work=work,
            adopt_job=job_adopter(store),
        )
        app.state.consumer = runtime.subscribe_stage(
            runner,
            group_id=settings.service_name,
            max_concurrent=settings.max_concurrent_jobs,
            shutdown_grace_s=settings.shutdown_grace_s,
        )
        runtime.ready_checks.append(default_model.check)
        try:
            async with runtime.running_stage(Stage.transcribe):
                yield
        finally:
            if default_model.task is not None:
                # A load in its thread cannot be interrupted; wait for it, it is bounded.
                with contextlib.suppress(Exception):
                    await default_model.task

    app = FastAPI(title="MxWhisper transcriber", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.models = registry
    app.include_router(health_router(lambda: runtime))
    instrument_app(app, settings.service_name)  # server spans, joined to each job's trace
    return app


def main() -> None:
    settings = TranscriberSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
