"""Entry point of the gateway: wires settings, runtime, auth, blob store, the embedder client
and the routers. The gateway consumes nothing from Kafka: it writes the outbox and relays it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from mxw_shared.auth import JwksVerifier
from mxw_shared.blobs import open_blob_store
from mxw_shared.logging import get_logger
from mxw_shared.problems import install_problem_handlers
from mxw_shared.retention import Pruner, job_events_task
from mxw_shared.service import ServiceRuntime, health_router, serve
from mxw_shared.telemetry import instrument_app
from mxw_shared.webhook_secrets import WebhookSecretBox, seal_stored_secrets

from mxw_gateway.admin.routes import router as admin_router
from mxw_gateway.devauth.routes import dev_jwks_router
from mxw_gateway.edits.routes import router as edits_router
from mxw_gateway.hygiene import RateLimitSearch, install_hygiene
from mxw_gateway.ingest.routes import router as ingest_router
from mxw_gateway.jobs.janitor import BlobJanitor
from mxw_gateway.jobs.routes import router as jobs_router
from mxw_gateway.openai_api.routes import router as openai_router
from mxw_gateway.openai_api.service import WaitSlots
from mxw_gateway.openapi import install_openapi
from mxw_gateway.search.routes import router as search_router
from mxw_gateway.settings import GatewaySettings
from mxw_gateway.timing.routes import router as timing_router
from mxw_gateway.timing.service import refresh_job_gauges
from mxw_gateway.vocabulary.routes import router as vocabulary_router
from mxw_gateway.voices.routes import router as voices_router
from mxw_gateway.web.routes import web_router
from mxw_gateway.webhooks.routes import router as webhooks_router

log = get_logger(__name__)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    runtime = ServiceRuntime(settings, relay_outbox=True)
    runtime.metric_refreshers.append(lambda: refresh_job_gauges(runtime.pool))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Webhook secrets at rest: a missing, malformed or wrong key stops start-up with its
        # reason; rows still in clear (or under an old key) are sealed under the current key.
        secret_box = WebhookSecretBox.from_settings(settings)
        await runtime.start_storage()
        try:
            sealed = await seal_stored_secrets(runtime.pool, secret_box)
        except BaseException:
            await runtime.stop()
            raise
        if sealed:
            log.info("webhook secrets sealed under the current key", rows=sealed)
        app.state.blob_store = open_blob_store(settings.blob_root, settings.blob_store_url)
        app.state.verifier = JwksVerifier.from_settings(settings)
        app.state.embedder_client = httpx.AsyncClient(
            base_url=settings.embedder_url.rstrip("/"),
            timeout=httpx.Timeout(settings.embedder_timeout_s, connect=3.0),
        )
        janitor = BlobJanitor(
            runtime.pool,
            app.state.blob_store,
            settings.blob_janitor_interval_s,
            settings.orphan_blob_after_s,
            settings.abandoned_part_after_s,
        )
        janitor_task = asyncio.create_task(janitor.run(), name="blob-janitor")
        # The status history of long-finished jobs (shared/retention.py).
        pruner = Pruner(runtime.pool, settings, [job_events_task(settings)])
        pruner.start()
        try:
            await runtime.start_messaging()
            yield
        finally:
            await pruner.stop()
            janitor.stop()
            await janitor_task
            await app.state.embedder_client.aclose()
            await runtime.stop()

    app = FastAPI(
        title="MxWhisper gateway",
        summary="Upload audio, follow jobs, read transcripts, search what was said.",
        version="1.0.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.rate_limiters = {}
    app.state.openai_waits = WaitSlots(settings.openai_max_waits_per_user)
    install_problem_handlers(app)
    install_hygiene(app, settings)
    install_openapi(app)
    app.include_router(health_router(lambda: runtime))
    instrument_app(app, settings.service_name)  # server spans, joined to each job's trace
    app.include_router(ingest_router)
    app.include_router(jobs_router)
    app.include_router(edits_router)
    app.include_router(openai_router)
    app.include_router(search_router, dependencies=[RateLimitSearch])
    app.include_router(admin_router)
    app.include_router(timing_router)
    app.include_router(webhooks_router)
    app.include_router(voices_router)
    app.include_router(vocabulary_router)
    app.include_router(web_router(settings))  # the web page at /app
    if settings.dev_jwks_path is not None:
        app.include_router(dev_jwks_router(settings.dev_jwks_path))
    return app


def main() -> None:
    settings = GatewaySettings()
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
