"""Entry point of the embedder: settings, runtime, the model, the chunks.ready handler and
the embeddings API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from mxw_shared import topics
from mxw_shared.contracts import ChunksReady, Stage
from mxw_shared.pipeline import StageRunner
from mxw_shared.problems import install_problem_handlers
from mxw_shared.service import ServiceRuntime, health_router, serve

from mxw_embedder.api import embeddings_router
from mxw_embedder.handlers import embed_chunks
from mxw_embedder.models import Embedder, load_embedder
from mxw_embedder.settings import EmbedderSettings


def create_app(settings: EmbedderSettings | None = None) -> FastAPI:
    settings = settings or EmbedderSettings()
    runtime = ServiceRuntime(settings)
    state: dict[str, Embedder] = {}

    async def model_loaded() -> None:
        if "embedder" not in state:
            raise RuntimeError("embedding model not loaded")

    runtime.ready_checks.append(model_loaded)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start_storage()
        # Seconds of CPU: off the event loop. A model that cannot load stops start-up with
        # its reason rather than failing every job later.
        embedder = await asyncio.to_thread(load_embedder, settings.model, settings.device)
        state["embedder"] = embedder
        runner: StageRunner[ChunksReady] = StageRunner(
            pool=runtime.pool,
            settings=settings,
            stage=Stage.embed,
            topic=topics.CHUNKS_READY,
            work=embed_chunks(settings, runtime.pool, embedder),
        )
        runtime.subscribe_stage(runner, group_id=settings.service_name)
        await runtime.start_messaging()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="MxWhisper embedder", lifespan=lifespan)
    app.state.runtime = runtime
    install_problem_handlers(app)
    app.include_router(health_router(lambda: runtime))
    app.include_router(embeddings_router(settings, lambda: state.get("embedder")))
    return app


def main() -> None:
    settings = EmbedderSettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
