"""What every service process shares: database pool, outbox relay, Kafka broker, and the
/livez, /readyz and /metrics endpoints. Services wire their handlers onto this."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from uvicorn.config import STARTUP_FAILURE

from mxw_shared import metrics, telemetry
from mxw_shared.contracts import Stage
from mxw_shared.db import Pool, check_schema, create_pool
from mxw_shared.deadletter import FailureCounter, is_outage
from mxw_shared.kafka import (
    KafkaAccessError,
    check_access,
    client_options,
    ensure_topics,
    make_producer,
    skip_unreadable,
)
from mxw_shared.logging import configure_logging, get_logger
from mxw_shared.outbox import OutboxRelay
from mxw_shared.pipeline import StageRunner
from mxw_shared.problems import problem_response
from mxw_shared.retention import Pruner, stage_service_tasks
from mxw_shared.settings import CommonSettings
from mxw_shared.sweeper import StageSweeper

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
        self.stage_consumers: list[StageConsumer] = []
        self._sweepers: list[StageSweeper] = []
        self._sweeper_tasks: list[asyncio.Task[None]] = []
        self.started = False
        # Scrape-time gauges of this service (jobs by state in the gateway, …).
        self.metric_refreshers: list[ReadyCheck] = []
        telemetry.setup_tracing(settings.service_name)

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "runtime not started"
        return self._pool

    async def start_storage(self) -> None:
        """Database first: a service without its schema must not consume anything."""
        self._pool = await create_pool(
            self.settings.dsn, self.settings.db_pool_min, self.settings.db_pool_max
        )
        await check_schema(self._pool)

    async def start_messaging(self) -> None:
        if self.settings.kafka_create_topics:  # else the set-up step created them
            await ensure_topics(self.settings)
        if self.relay_outbox:
            self._producer = make_producer(self.settings)
            await self._producer.start()
            self._relay = OutboxRelay(
                self.pool, self._producer, self.settings.outbox_poll_interval_s
            )
            self._relay_task = asyncio.create_task(self._relay.run(), name="outbox-relay")
        # Together: a consumer's start waits for its partitions, and members that join one
        # by one each force another rebalance round of the whole group (~20 s for three).
        async with asyncio.TaskGroup() as starting:
            for consumer in self.stage_consumers:
                starting.create_task(consumer.start())
        for consumer in self.stage_consumers:
            if self.settings.sweep_interval_s > 0:
                sweeper = StageSweeper(
                    self.pool, self.settings, consumer.runner.stage, consumer.runner.pipeline
                )
                self._sweepers.append(sweeper)
                self._sweeper_tasks.append(
                    asyncio.create_task(sweeper.run(), name=f"sweep:{sweeper.stage.value}")
                )
        self.started = True

    def subscribe_stage(
        self,
        runner: StageRunner[Any],
        group_id: str,
        *,
        max_concurrent: int = 1,
        shutdown_grace_s: float | None = None,
    ) -> StageConsumer:
        """Consume `runner.topic` in `group_id` (see StageConsumer): up to `max_concurrent`
        records at once, the offset committed after the handler's transaction, a record
        delivered again when the handler raises (database down; any other error at most
        `max_handler_attempts` times). Starts with start_messaging."""
        grace = self.settings.shutdown_grace_s if shutdown_grace_s is None else shutdown_grace_s
        consumer = StageConsumer(runner, self.settings, group_id, max_concurrent, grace)
        self.stage_consumers.append(consumer)
        return consumer

    @contextlib.asynccontextmanager
    async def running_stage(self, stage: Stage) -> AsyncIterator[None]:
        """A stage service at work: messaging started (its consumers subscribed first) and
        the stage's own retention (dedupe marks, sweep rows) running; both stopped on exit."""
        await self.start_messaging()
        pruner = Pruner(self.pool, self.settings, stage_service_tasks(self.settings, [stage]))
        pruner.start()
        try:
            yield
        finally:
            await pruner.stop()
            await self.stop()

    async def stop(self) -> None:
        for sweeper in self._sweepers:
            sweeper.stop()
        for task in self._sweeper_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for consumer in self.stage_consumers:
            await consumer.stop()
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

    async def refresh_metrics(self) -> None:
        refreshers = list(self.metric_refreshers)
        if self.relay_outbox:
            refreshers.append(lambda: metrics.refresh_outbox(self.pool))
        await metrics.refresh(refreshers)

    async def check_ready(self) -> list[str]:
        """What keeps this service from being ready, as names safe to show anyone (/readyz
        is reachable without a token): the errors themselves, which may name hosts, users or
        paths, go to the log only."""
        if not self.started:
            return ["starting"]
        producer = self._producer

        async def database() -> None:
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), 2.0)

        async def broker() -> None:  # a metadata round trip: fails while no broker answers
            if producer is not None:
                await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)

        checks: list[tuple[str, ReadyCheck]] = [
            ("database unavailable", database),
            ("broker unavailable", broker),
            *((f"{_check_name(c)} not ready", c) for c in self.ready_checks),
        ]
        problems: list[str] = []
        for public, check in checks:
            try:
                await check()
            except Exception as exc:
                log.warning("not ready", check=public, error=repr(exc)[:500])
                problems.append(public)
        return problems


def _check_name(check: ReadyCheck) -> str:
    """A service's own readiness check by what it checks: its object's class, or its name."""
    owner = getattr(check, "__self__", None)
    return type(owner).__name__ if owner is not None else getattr(check, "__name__", "check")


class StageConsumer:
    """Consumes one stage topic with an explicit aiokafka loop, so that long work never
    costs group membership: the partition of a record being handled is paused and the
    consumer keeps polling (aiokafka counts a consumer idle, and leaves the group after
    `max.poll.interval.ms`, only while nobody polls). The handler runs as its own task; the
    offset is committed after it returned, i.e. after its transaction; when it raises, the
    partition is rewound so the record is delivered again: for as long as the error is an
    outage, at most `max_handler_attempts` times for any other (then the runner gives the
    record up: dead letter, job failed). One record per partition at a
    time keeps a job's events (key = job id) in order; up to `max_concurrent` records of
    different partitions run at once."""

    def __init__(
        self,
        runner: StageRunner[Any],
        settings: CommonSettings,
        group_id: str,
        max_concurrent: int = 1,
        shutdown_grace_s: float = 30.0,
        retry_delay_s: float = 1.0,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.runner = runner
        self.settings = settings
        self.group_id = group_id
        self.max_concurrent = max_concurrent
        self.shutdown_grace_s = shutdown_grace_s
        self.retry_delay_s = retry_delay_s
        self.inflight: dict[TopicPartition, asyncio.Task[None]] = {}
        # Assignments and revocations seen, for health and tests (a rebalance shows here).
        self.assignments = 0
        self.revocations = 0
        self.delivered = 0
        self.failures = FailureCounter()
        self.rebuilds = 0  # clients replaced after repeated poll failures
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # Consecutive failed polls (about a second apart) after which the client is replaced:
    # aiokafka can keep a coordinator connection it closed itself after a broker restart
    # ("unable to perform operation on <TCPTransport closed=True>") and never recover.
    rebuild_after_failures = 30

    def _new_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            client_id=f"{self.settings.service_name}-{self.settings.instance_id}",
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=self.settings.kafka_max_poll_interval_ms,
        )
        consumer.subscribe([self.runner.topic], listener=_Rebalance(self))
        return consumer

    async def _started(self) -> AIOKafkaConsumer:
        consumer = self._new_consumer()
        try:
            await consumer.start()
        except BaseException:  # no broker, or cancelled with a sibling: leave no client behind
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise
        return consumer

    async def start(self) -> None:
        self._consumer = await self._started()
        self._task = asyncio.create_task(self._poll(), name=f"consume:{self.runner.topic}")

    async def _rebuild(self) -> None:
        """Replace a client that keeps failing. Records in hand finish on the old one; what
        it can no longer commit comes back, and the runner skips what it already did."""
        old = self._consumer
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), 30)
        while not self._stopping:
            try:
                self._consumer = await self._started()
                self.rebuilds += 1
                log.warning(
                    "stage consumer replaced after repeated poll failures", topic=self.runner.topic
                )
                return
            except Exception as exc:  # the broker is still away: try again shortly
                log.warning(
                    "stage consumer not replaced yet", topic=self.runner.topic, error=repr(exc)
                )
                await asyncio.sleep(1.0)

    async def _poll(self) -> None:
        failed_polls = 0
        while not self._stopping:
            consumer = self._consumer
            assert consumer is not None
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=1)
            except asyncio.CancelledError:
                raise
            except UnicodeDecodeError:  # a record the client itself cannot parse
                await self._skip_unreadable()
                continue
            except Exception as exc:  # broker trouble: aiokafka reconnects, keep polling
                log.warning("stage consumer poll failed", topic=self.runner.topic, error=repr(exc))
                failed_polls += 1
                if failed_polls >= self.rebuild_after_failures:
                    failed_polls = 0
                    await self._rebuild()
                    continue
                await asyncio.sleep(1.0)
                continue
            failed_polls = 0
            for tp, records in batch.items():
                for record in records:
                    if self._stopping:
                        # Not handled: rewind so the next owner of the partition gets it.
                        consumer.seek(tp, record.offset)
                        break
                    self.delivered += 1
                    self.inflight[tp] = asyncio.create_task(
                        self._handle(tp, record), name=f"handle:{tp.topic}:{tp.partition}"
                    )
            self._sync_pauses()
            with contextlib.suppress(Exception):  # lag is best effort, never stops polling
                await asyncio.wait_for(metrics.observe_lag(consumer, self.group_id), 0.5)

    async def _skip_unreadable(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            skipped = await skip_unreadable(consumer, consumer.assignment() - consumer.paused())
            if skipped is not None:
                await self.runner.dead_letter([], b"", None, skipped.reason)
        except Exception as error:  # an outage meanwhile: the record fails the next poll too
            log.warning("unreadable record not skipped", topic=self.runner.topic, error=repr(error))
            await asyncio.sleep(self.retry_delay_s)

    def _sync_pauses(self) -> None:
        """Paused: partitions with a record in hand, and all of them while no slot is free."""
        consumer = self._consumer
        if consumer is None:
            return
        assigned = consumer.assignment()
        full = len(self.inflight) >= self.max_concurrent or self._stopping
        wanted = {tp for tp in assigned if full or tp in self.inflight}
        paused = consumer.paused()
        if pause := wanted - paused:
            consumer.pause(*pause)
        if resume := (paused & assigned) - wanted:
            consumer.resume(*resume)

    async def _handle(self, tp: TopicPartition, record: Any) -> None:
        consumer = self._consumer
        assert consumer is not None
        committed = False
        value = record.value or b""
        try:
            try:
                await self.runner.handle(record.headers, value, record.key)
            except Exception as exc:
                failures = 0 if is_outage(exc) else self.failures.failed(tp, record.offset)
                if failures < self.settings.max_handler_attempts:
                    raise
                # The same error every time: the record leaves the partition as a dead letter.
                await self.runner.give_up(record.headers, value, record.key, exc, failures)
            committed = True
            self.failures.forget(tp)
        except asyncio.CancelledError:
            # Shutdown after the grace period: not committed, delivered again elsewhere.
            self._rewind(tp, record.offset)
            raise
        except Exception as exc:
            log.warning(
                "stage handler failed; record will be delivered again",
                topic=tp.topic,
                partition=tp.partition,
                offset=record.offset,
                error=repr(exc)[:1000],
            )
            await asyncio.sleep(self.retry_delay_s)
            self._rewind(tp, record.offset)
        finally:
            self.inflight.pop(tp, None)
            if committed and tp in consumer.assignment():
                try:
                    await consumer.commit({tp: record.offset + 1})
                except Exception as exc:  # lost the partition meanwhile: its next owner
                    # receives the record again and finds it processed (de-duplication).
                    log.warning("offset commit failed", topic=tp.topic, error=repr(exc))
            self._sync_pauses()

    def _rewind(self, tp: TopicPartition, offset: int) -> None:
        consumer = self._consumer
        if consumer is not None and tp in consumer.assignment():
            consumer.seek(tp, offset)

    async def stop(self) -> None:
        """Stop taking records, let the ones in hand finish (up to the grace period, then
        cancel them: they were not committed and come back), leave the group."""
        self._stopping = True
        self._sync_pauses()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        tasks = list(self.inflight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: StageConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            self.owner.revocations += 1

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.owner.assignments += 1
        # A partition given back while its record is still in hand stays paused, so the
        # same record (its offset is not committed yet) is not started a second time here.
        self.owner._sync_pauses()


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
        runtime = get_runtime()
        if runtime is not None and runtime.started:
            await runtime.refresh_metrics()
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


def prepare_process(settings: CommonSettings) -> None:
    """What a service process does before it serves: configure logging, then prove that
    the broker accepts this service's Kafka principal. A wrong password, an unknown user or
    a wrong security protocol ends the process here with one line that names the principal
    and the broker (exit code 3, uvicorn's code for a failed start-up), instead of a client
    retrying in the background or a traceback out of the lifespan."""
    configure_logging(settings.log_level, settings.log_format, settings.service_name)
    try:
        asyncio.run(check_access(settings))
    except KafkaAccessError as exc:
        log.error("Kafka refused this service; not starting", error=str(exc))
        raise SystemExit(STARTUP_FAILURE) from None


def serve(app: FastAPI, settings: CommonSettings, **options: Any) -> None:
    """Run a service's app; SIGTERM/SIGINT trigger the lifespan's graceful shutdown."""
    prepare_process(settings)
    uvicorn.Server(uvicorn_config(app, settings, **options)).run()
