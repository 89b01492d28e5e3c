"""The job.status consumers.

- Fan-out: every replica must see every status event, so each one reads in a consumer group
  of its own, from the latest offset (history comes from the database), and commits nothing.
- Webhooks: the replicas share one group, so each terminal event creates its deliveries
  once, and committed offsets carry over what was published while no replica ran.

A malformed record (undecodable headers, invalid or deeply nested JSON, NUL characters, over
`max_event_bytes`, a header name aiokafka cannot parse) never stops either loop: the webhook
trigger, the one reader the replicas share, dead-letters it to `job.status.dlq` with the
reason (an outbox row, which the relays of the other services publish); the live feed skips
it. A handler error that is no outage is retried `max_handler_attempts` times, then given up.

Both are plain aiokafka loops over `getmany` batches. FastStream's per-message machinery
(dependency injection, middlewares, a commit per message) cost about 1 ms of CPU per event
and capped one replica near 1000 events/s (docs/benchmarks.md, "Notifier").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from mxw_shared import telemetry, topics
from mxw_shared.contracts import Envelope, JobStatus, decode_headers, parse_event
from mxw_shared.deadletter import FailureCounter, clean_text, dead_letter, is_outage
from mxw_shared.kafka import Unreadable, client_options, skip_unreadable
from mxw_shared.logging import get_logger
from prometheus_client import Counter

from mxw_notifier.domain import TERMINAL_STATES, StatusMessage
from mxw_notifier.fanout import Hub
from mxw_notifier.settings import NotifierSettings
from mxw_notifier.webhooks import WebhookDispatcher

log = get_logger(__name__)

STATUS_EVENTS = Counter(
    "mxw_notifier_status_events_total", "job.status records consumed", ["result"]
)
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


def replica_group_id(service_name: str, instance_id: str) -> str:
    # The random part keeps two processes on one host (or a restarted pod) apart.
    return f"{service_name}-{instance_id}-{uuid.uuid4().hex[:8]}"


class _AssignmentTracker(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = set()
        self.changed = asyncio.Event()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.assigned -= set(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned |= set(assigned)
        self.changed.set()


class _GroupLoop:
    """Reads job.status in `group_id`, a batch at a time, into `handle`. `live` once the
    group owns partitions and their starting offsets are fixed, so nothing published after
    that point is missed. With `commit`, offsets are committed after each batch was
    handled; a record whose handler raised is read again (after a pause): for as long as
    the error is an outage, `max_handler_attempts` times for any other, then `give_up`."""

    name = "job.status consumer"

    def __init__(
        self,
        settings: NotifierSettings,
        group_id: str,
        handle: Callable[[Record], Awaitable[None]],
        *,
        commit: bool,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.handle = handle
        self.commit = commit
        self.live = False
        self.failures = FailureCounter()
        self._tracker = _AssignmentTracker()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        # Read a record at a time while an unreadable record is ahead (see _skip_unreadable).
        self._careful = False

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=self.group_id,
            client_id=f"{self.settings.service_name}-{self.settings.instance_id}",
            auto_offset_reset="latest",
            enable_auto_commit=False,
            # How long the broker may hold a fetch for more data: the floor of the latency.
            fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,
        )
        await self._consumer.start()
        self._consumer.subscribe([topics.JOB_STATUS], listener=self._tracker)
        self._task = asyncio.create_task(self._run(), name=f"{self.name} loop")

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batches = await consumer.getmany(
                    timeout_ms=1000, max_records=1 if self._careful else 1000
                )
            except asyncio.CancelledError:
                raise
            except UnicodeDecodeError:  # a record the client itself cannot parse
                await self._skip_unreadable()
                continue
            except Exception as exc:  # broker trouble: aiokafka reconnects; keep polling
                log.warning(f"{self.name} poll failed", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            if not batches and self._careful and await self._caught_up():
                self._careful = False  # read to the end: no unreadable record is ahead
            for partition, records in batches.items():
                for record in records:
                    if not await self._handle(partition, record):
                        # Read it again later: the offset is not committed past it.
                        consumer.seek(partition, record.offset)
                        await asyncio.sleep(1.0)
                        break
            if self.commit and batches:
                with contextlib.suppress(Exception):  # the next batch commits again
                    await consumer.commit()

    async def _handle(self, partition: TopicPartition, record: Record) -> bool:
        """Handle one record; False: read it again."""
        try:
            await self.handle(record)
        except Exception as exc:
            failures = 0 if is_outage(exc) else self.failures.failed(partition, record.offset)
            if failures < self.settings.max_handler_attempts:
                log.warning(f"{self.name} record failed", error=repr(exc)[:1000])
                return False
            try:
                await self.give_up(record, f"{type(exc).__name__}: {exc}", failures)
            except Exception as give_up_error:  # an outage meanwhile: the record comes back
                log.warning(f"{self.name} could not give a record up", error=repr(give_up_error))
                return False
        self.failures.forget(partition)
        return True

    async def give_up(self, record: Record, reason: str, attempts: int) -> None:
        """A record whose handler failed `attempts` times with errors that are no outage."""
        STATUS_EVENTS.labels("failed").inc()
        log.error(f"{self.name} record skipped after repeated errors", error=reason[:1000])

    async def _skip_unreadable(self) -> None:
        """aiokafka drops the records of a fetch it parsed before the one it cannot parse:
        unless that one is next on its partition, the probe finds nothing. So read one
        record at a time from here until the probe finds it; those before it are handled
        as any other."""
        consumer = self._consumer
        assert consumer is not None
        try:
            skipped = await skip_unreadable(consumer, consumer.assignment() - consumer.paused())
            self._careful = skipped is None
            if skipped is not None:
                await self.unreadable(skipped)
        except Exception as error:  # an outage meanwhile: the record fails the next poll too
            log.warning(f"{self.name} unreadable record not skipped", error=repr(error))
            await asyncio.sleep(1.0)

    async def _caught_up(self) -> bool:
        """Every assigned partition read to its end as the broker last said it."""
        consumer = self._consumer
        assert consumer is not None
        for partition in consumer.assignment():
            end = consumer.highwater(partition)
            if end is None or await consumer.position(partition) < end:
                return False
        return True

    async def unreadable(self, skipped: Unreadable) -> None:
        """A record the client cannot parse was skipped."""
        STATUS_EVENTS.labels("invalid").inc()
        log.warning(f"{self.name} skipped a record", error=skipped.reason)

    async def wait_live(self) -> None:
        while not self._tracker.assigned:
            self._tracker.changed.clear()
            await self._tracker.changed.wait()
        if self._consumer is not None:
            for partition in list(self._tracker.assigned):
                await self._consumer.position(partition)
        self.live = True
        log.info(f"{self.name} live", group_id=self.group_id)

    async def check_ready(self) -> None:
        if not self.live:
            raise RuntimeError(f"{self.name} has no partitions yet")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()


def _parse(record: Record, max_bytes: int) -> tuple[Envelope, JobStatus] | str:
    """The record's envelope and event, or why it is not a valid job.status event."""
    value = record.value or b""
    try:
        if len(value) > max_bytes:
            raise ValueError(f"{len(value)} bytes, more than MXW_MAX_EVENT_BYTES ({max_bytes})")
        envelope, event = parse_event(record.topic, decode_headers(record.headers), value)
    except Exception as exc:  # whatever a record can cause: ValueError, RecursionError
        STATUS_EVENTS.labels("invalid").inc()
        log.warning("invalid job.status record", error=clean_text(str(exc), 500))
        return f"invalid event: {exc}"
    if not isinstance(event, JobStatus):
        return "invalid event: not a job.status event"
    return envelope, event


class StatusConsumer(_GroupLoop):
    """Feeds `hub` from job.status, in this replica's own group."""

    def __init__(self, settings: NotifierSettings, hub: Hub, group_id: str) -> None:
        super().__init__(settings, group_id, self.on_record, commit=False)
        self.hub = hub

    async def on_record(self, record: Record) -> None:
        if not self._watched(record):
            STATUS_EVENTS.labels("unwatched").inc()
            return
        headers = decode_headers(record.headers)
        # The notification joins the job's trace, under the stage that sent the status.
        with telemetry.consume_span(record.topic, headers, "notifier", self.group_id):
            parsed = _parse(record, self.settings.max_event_bytes)
            if isinstance(parsed, str):  # skipped; the webhook trigger dead-letters it
                return
            delivered = self.hub.publish(StatusMessage.from_event(*parsed))
        STATUS_EVENTS.labels("delivered" if delivered else "unwatched").inc()

    def _watched(self, record: Record) -> bool:
        """A cheap look before the full parse: every replica reads every event, and most of
        them concern nobody connected here. Unreadable records go on to be reported."""
        value = record.value or b""
        if len(value) > self.settings.max_event_bytes:
            return True
        try:
            event = json.loads(value)
            return self.hub.wants(uuid.UUID(event["job_id"]), event.get("owner_id"))
        except Exception:  # not JSON, nested too deep, no job id: the full parse says why
            return True


class WebhookTrigger(_GroupLoop):
    """Creates webhook deliveries for terminal job.status events, in the group the replicas
    share; offsets are committed after the deliveries (a database outage reads it again)."""

    name = "webhook trigger"

    def __init__(
        self, settings: NotifierSettings, dispatcher: WebhookDispatcher, group_id: str
    ) -> None:
        super().__init__(settings, group_id, self.on_record, commit=True)
        self.dispatcher = dispatcher

    async def on_record(self, record: Record) -> None:
        parsed = _parse(record, self.settings.max_event_bytes)
        if isinstance(parsed, str):
            await self._dead_letter(
                record.topic, record.headers, record.value or b"", record.key, parsed, 0
            )
            return
        envelope, event = parsed
        if event.state not in TERMINAL_STATES:
            return
        with telemetry.consume_span(
            record.topic, decode_headers(record.headers), "notifier", self.group_id
        ):
            await self.dispatcher.on_status(envelope.id)

    async def give_up(self, record: Record, reason: str, attempts: int) -> None:
        log.error("webhook trigger dead-letters a record after repeated errors", error=reason)
        reason = f"webhook trigger failed {attempts} times: {reason}"
        await self._dead_letter(
            record.topic, record.headers, record.value or b"", record.key, reason, attempts
        )

    async def unreadable(self, skipped: Unreadable) -> None:
        await super().unreadable(skipped)
        await self._dead_letter(skipped.partition.topic, [], b"", None, skipped.reason, 0)

    async def _dead_letter(
        self,
        topic: str,
        headers: object,
        body: bytes,
        key: bytes | None,
        reason: str,
        attempts: int,
    ) -> None:
        async with self.dispatcher.pool.acquire() as conn, conn.transaction():
            await dead_letter(
                conn,
                topic=topic,
                raw_headers=headers,
                body=body,
                key=key,
                reason=reason,
                consumer=self.group_id,
                attempts=attempts,
                max_body_bytes=self.settings.max_event_bytes,
            )
