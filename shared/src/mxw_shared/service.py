"""What every service process shares: database pool, outbox relay, Kafka broker, and the
/livez, /readyz and /metrics endpoints. Services wire their handlers onto this."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, FastAPI, Request, Response
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mxw_shared.contracts import decode_headers
from mxw_shared.db import Pool, check_schema, create_pool
from mxw_shared.kafka import ensure_topics, make_broker, make_producer
from mxw_shared.logging import configure_logging, get_logger
from mxw_shared.outbox import OutboxRelay
from mxw_shared.pipeline import StageRunner
from mxw_shared.problems import problem_response
from mxw_shared.settings import CommonSettings

log = get_logger(__name__)

ReadyCheck = Callable[[], Awaitable[None]]


class ServiceRuntime:
    """Start-up and graceful shutdown in one place. Order on stop: stop consuming, let the
    current handler finish, flush the outbox, close connections."""

    def __init__(self, settings: CommonSettings, *, relay_outbox: bool = True) -> None:
        self.settings = settings
        self.relay_outbox = relay_outbox
        self.ready_checks: list[ReadyCheck] = []
        self._pool: Pool | None = None
        self._producer: AIOKafkaProducer | None = None
        self._relay: OutboxRelay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._broker: KafkaBroker | None = None
        self.started = False

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "runtime not started"
        return self._pool

    @property
    def broker(self) -> KafkaBroker:
        if self._broker is None:
            self._broker = make_broker(self.settings)
        return self._broker

    async def start_storage(self) -> None:
        """Database first: a service without its schema must not consume anything."""
        self._pool = await create_pool(
            self.settings.dsn, self.settings.db_pool_min, self.settings.db_pool_max
        )
        await check_schema(self._pool)

    async def start_messaging(self) -> None:
        await ensure_topics(self.settings)
        if self.relay_outbox:
            self._producer = make_producer(self.settings)
            await self._producer.start()
            self._relay = OutboxRelay(
                self.pool, self._producer, self.settings.outbox_poll_interval_s
            )
            self._relay_task = asyncio.create_task(self._relay.run(), name="outbox-relay")
        if self._broker is not None:
            await self._broker.start()
        self.started = True

    def subscribe_stage(self, runner: StageRunner[Any], group_id: str) -> None:
        """Consume `runner.topic` in `group_id`; the offset is committed after the handler
        returned, i.e. after its results and outbox rows committed. An exception (database
        down) nacks the record so it is delivered again."""

        @self.broker.subscriber(
            runner.topic,
            group_id=group_id,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            max_poll_interval_ms=self.settings.kafka_max_poll_interval_ms,
            max_records=1,
            title=f"{group_id}:{runner.topic}",
        )
        async def handle(msg: KafkaMessage) -> None:
            raw = msg.raw_message
            headers = decode_headers(getattr(raw, "headers", None))
            await runner.handle(headers, msg.body, getattr(raw, "key", None))

    async def stop(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await self._broker.stop()
        if self._relay is not None:
            await self._relay.stop()
        if self._relay_task is not None:
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._relay_task
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        if self._pool is not None:
            await self._pool.close()
        self.started = False

    async def check_ready(self) -> list[str]:
        problems: list[str] = []
        if not self.started:
            return ["starting"]
        try:
            await self.pool.fetchval("SELECT 1")
        except Exception as exc:
            problems.append(f"database: {exc}")
        for check in self.ready_checks:
            try:
                await check()
            except Exception as exc:
                problems.append(str(exc))
        return problems


def health_router(get_runtime: Callable[[], ServiceRuntime | None]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/livez", include_in_schema=False)
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        runtime = get_runtime()
        problems = ["starting"] if runtime is None else await runtime.check_ready()
        if problems:
            return problem_response(
                503, "Not ready", "; ".join(problems), instance=request.url.path
            )
        return Response('{"status":"ready"}', media_type="application/json")

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def uvicorn_config(app: FastAPI, settings: CommonSettings, **options: Any) -> uvicorn.Config:
    """The one server configuration of every service; `options` adds uvicorn settings."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        **options,
    )


def serve(app: FastAPI, settings: CommonSettings, **options: Any) -> None:
    """Run a service's app; SIGTERM/SIGINT trigger the lifespan's graceful shutdown."""
    configure_logging(settings.log_level, settings.log_format, settings.service_name)
    uvicorn.Server(uvicorn_config(app, settings, **options)).run()
