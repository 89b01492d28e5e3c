"""Entry point of the embedder: settings, runtime, the model, the chunks.ready handlers and
the embeddings API, all sharing one micro-batcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from mxw_shared.contracts import ChunksReady, Stage
from mxw_shared.logging import get_logger
from mxw_shared.pipeline import StageRunner
from mxw_shared.problems import install_problem_handlers
from mxw_shared.service import ServiceRuntime, health_router, serve
from mxw_shared.telemetry import instrument_app
from mxw_shared.user_access import UserAccess

from mxw_embedder import repository
from mxw_embedder.api import embeddings_router
from mxw_embedder.batcher import MicroBatcher
from mxw_embedder.domain import dimension_mismatch, vector_column_dimensions
from mxw_embedder.handlers import embed_chunks
from mxw_embedder.models import load_embedder
from mxw_embedder.settings import EmbedderSettings

log = get_logger(__name__)


class DimensionMismatch(RuntimeError):
    """The model's vectors do not fit the database column."""


def create_app(settings: EmbedderSettings | None = None) -> FastAPI:
    settings = settings or EmbedderSettings()
    runtime = ServiceRuntime(settings)
    state: dict[str, MicroBatcher] = {}
    access: dict[str, UserAccess] = {}  # from start-up on: it needs the pool

    async def model_loaded() -> None:
        if "batcher" not in state:
            raise RuntimeError("embedding model not loaded")

    runtime.ready_checks.append(model_loaded)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start_storage()
        access["users"] = UserAccess(runtime.pool, settings.user_access_cache_s)
        try:
            # Seconds of CPU: off the event loop. A model that cannot load, or whose
            # vectors do not fit the column, stops start-up with its reason rather than
            # failing every job later.
            embedder = await asyncio.to_thread(
                load_embedder,
                settings.model,
                settings.device,
                settings.embedding_runtime,
                settings.onnx_cache_dir,
                settings.onnx_threads,
            )
            log.info(
                "embedding model loaded",
                model=embedder.name,
                device=embedder.device,
                runtime=embedder.runtime,
            )
            column = await repository.embedding_column_type(runtime.pool)
            problem = dimension_mismatch(
                embedder.name, embedder.dimensions, vector_column_dimensions(column)
            )
            if problem is not None:
                log.error("embedding dimension mismatch", reason=problem)
                raise DimensionMismatch(problem)
        except BaseException:
            await runtime.stop()
            raise
        batcher = MicroBatcher(
            embedder, max_batch=settings.max_batch_texts, encode_batch_size=settings.batch_size
        )
        batcher.start()
        state["batcher"] = batcher
        # One runner per consumer: a runner keeps per-record state while it handles one.
        for _ in range(settings.stage_consumers):
            runner: StageRunner[ChunksReady] = StageRunner(
                pool=runtime.pool,
                settings=settings,
                stage=Stage.embed,
                work=embed_chunks(settings, runtime.pool, batcher),
            )
            runtime.subscribe_stage(runner, group_id=settings.service_name)
        try:
            async with runtime.running_stage(Stage.embed):
                yield
        finally:
            await batcher.stop()

    app = FastAPI(title="MxWhisper embedder", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.batcher = lambda: state.get("batcher")
    install_problem_handlers(app)
    app.include_router(health_router(lambda: runtime))
    instrument_app(app, settings.service_name)  # server spans, joined to each job's trace
    app.include_router(
        embeddings_router(settings, lambda: state.get("batcher"), lambda: access.get("users"))
    )
    return app


def main() -> None:
    settings = EmbedderSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
