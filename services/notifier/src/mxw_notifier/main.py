"""Entry point of the notifier: wires settings, runtime, the job.status consumers, the feeds
and the webhook dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from mxw_shared import telemetry
from mxw_shared.auth import JwksVerifier
from mxw_shared.problems import install_problem_handlers
from mxw_shared.retention import Pruner, webhook_deliveries_task
from mxw_shared.service import (
    ServiceRuntime,
    health_router,
    prepare_process,
    serve,
    uvicorn_config,
)
from mxw_shared.user_access import UserAccess
from mxw_shared.webhook_secrets import WebhookSecretBox

from mxw_notifier.consumer import StatusConsumer, WebhookTrigger, replica_group_id
from mxw_notifier.fanout import Hub
from mxw_notifier.feed import Feed, feed_router
from mxw_notifier.settings import NotifierSettings
from mxw_notifier.webhooks import WebhookDispatcher


def create_app(settings: NotifierSettings | None = None) -> FastAPI:
    settings = settings or NotifierSettings()
    # A missing or malformed MXW_WEBHOOK_SECRET_KEY stops start-up here, with its reason.
    secret_box = WebhookSecretBox.from_settings(settings)
    # The notifier's own writes (webhook deliveries) announce nothing: no outbox to relay.
    # Its dead letters of job.status go to the outbox too; the relays of the gateway and
    # the workers, which every deployment runs, publish them.
    runtime = ServiceRuntime(settings, relay_outbox=False)
    hub = Hub()
    feed = Feed(settings, JwksVerifier.from_settings(settings), hub)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start_storage()
        feed.pool = runtime.pool
        feed.access = UserAccess(runtime.pool, settings.user_access_cache_s)
        dispatcher = WebhookDispatcher(runtime.pool, settings, secret_box)
        app.state.dispatcher = dispatcher
        consumers = (
            StatusConsumer(
                settings, hub, replica_group_id(settings.service_name, settings.instance_id)
            ),
            WebhookTrigger(settings, dispatcher, settings.webhook_group_id),
        )
        for consumer in consumers:
            runtime.ready_checks.append(consumer.check_ready)
        await runtime.start_messaging()  # topics exist before the consumers subscribe
        for consumer in consumers:
            await consumer.start()
        # Ready (and so given traffic) only once the consumers read from the live end.
        background = [
            asyncio.create_task(consumer.wait_live(), name=f"{consumer.name} live")
            for consumer in consumers
        ]
        background.append(asyncio.create_task(dispatcher.run(), name="webhook-dispatcher"))
        # Finished webhook deliveries and their attempts (shared/retention.py).
        pruner = Pruner(runtime.pool, settings, [webhook_deliveries_task(settings)])
        pruner.start()
        try:
            yield
        finally:
            await pruner.stop()
            for consumer in consumers:
                await consumer.stop()
            await dispatcher.stop()
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await runtime.stop()

    app = FastAPI(title="MxWhisper notifier", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.hub = hub
    install_problem_handlers(app)
    # Browsers on other origins (the web page on the gateway) read the SSE feed; WebSockets
    # are not subject to CORS. Bearer tokens only, never cookies: no credentials mode.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.sse_cors_origins,
        allow_methods=["GET"],
        allow_headers=["Authorization", "Last-Event-ID"],
        allow_credentials=False,
        max_age=600,
    )
    app.include_router(health_router(lambda: runtime))
    # One server span per feed instead of one more per message sent or received: a busy
    # fan-out sends thousands a second.
    telemetry.instrument_app(app, settings.service_name, exclude_spans=["send", "receive"])
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


def listening_socket(settings: NotifierSettings) -> socket.socket | None:
    """The server's socket when connections need a bounded send buffer (Linux passes
    SO_SNDBUF on to every accepted connection); None: uvicorn binds as usual."""
    if settings.send_buffer_bytes is None:
        return None
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer_bytes)
    sock.bind((settings.host, settings.port))
    sock.set_inheritable(True)
    return sock


def main() -> None:
    settings = NotifierSettings()
    sock = listening_socket(settings)
    if sock is None:
        serve(create_app(settings), settings, **server_options(settings))
        return
    prepare_process(settings)
    uvicorn.Server(server_config(create_app(settings), settings)).run(sockets=[sock])


if __name__ == "__main__":
    main()
