"""Entry point of the notifier: wires settings, runtime, the job.status consumer and the feed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from mxw_shared.auth import JwksVerifier
from mxw_shared.problems import install_problem_handlers
from mxw_shared.service import ServiceRuntime, health_router, serve, uvicorn_config
from mxw_shared.telemetry import instrument_app

from mxw_notifier.consumer import StatusConsumer, replica_group_id
from mxw_notifier.fanout import JobFanout
from mxw_notifier.feed import Feed, feed_router
from mxw_notifier.settings import NotifierSettings


def create_app(settings: NotifierSettings | None = None) -> FastAPI:
    settings = settings or NotifierSettings()
    # The notifier writes nothing to the database, so it has no outbox to relay.
    runtime = ServiceRuntime(settings, relay_outbox=False)
    fanout = JobFanout(settings.connection_queue_size)
    feed = Feed(settings, JwksVerifier.from_settings(settings), fanout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start_storage()
        feed.pool = runtime.pool
        consumer = StatusConsumer(
            runtime.broker,
            fanout,
            replica_group_id(settings.service_name, settings.instance_id),
        )
        runtime.ready_checks.append(consumer.check_ready)
        await runtime.start_messaging()
        # Ready (and so given traffic) only once the consumer reads from the live end.
        going_live = asyncio.create_task(consumer.wait_live(), name="status-consumer-live")
        try:
            yield
        finally:
            going_live.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await going_live
            await runtime.stop()

    app = FastAPI(title="MxWhisper notifier", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.fanout = fanout
    install_problem_handlers(app)
    app.include_router(health_router(lambda: runtime))
    instrument_app(app, settings.service_name)  # server spans, joined to each job's trace
    app.include_router(feed_router(feed))
    return app


def server_options(settings: NotifierSettings) -> dict[str, Any]:
    """WebSocket keep-alive: protocol pings every `ping_interval_s`; a peer that misses
    `ping_timeout_s` is disconnected."""
    return {
        "ws_ping_interval": settings.ping_interval_s,
        "ws_ping_timeout": settings.ping_timeout_s,
    }


def server_config(app: FastAPI, settings: NotifierSettings) -> uvicorn.Config:
    return uvicorn_config(app, settings, **server_options(settings))


def main() -> None:
    settings = NotifierSettings()
    serve(create_app(settings), settings, **server_options(settings))


if __name__ == "__main__":
    main()
