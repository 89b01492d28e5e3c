"""The job.status consumers.

- Fan-out: every replica must see every status event, so each one reads in a consumer group
  of its own, from the latest offset (history comes from the database), and commits nothing.
- Webhooks: the replicas share one group, so each terminal event creates its deliveries
  once, and committed offsets carry over what was published while no replica ran.

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
    handled; a record whose handler raised is read again (after a pause)."""

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
        self._tracker = _AssignmentTracker()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
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
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker trouble: aiokafka reconnects; keep polling
                log.warning(f"{self.name} poll failed", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            for partition, records in batches.items():
                for record in records:
                    try:
                        await self.handle(record)
                    except Exception as exc:
                        # Read it again later: the offset is not committed past it.
                        log.warning(f"{self.name} record failed", error=repr(exc))
                        consumer.seek(partition, record.offset)
                        await asyncio.sleep(1.0)
                        break
            if self.commit and batches:
                with contextlib.suppress(Exception):  # the next batch commits again
                    await consumer.commit()

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


def _parse(record: Record) -> tuple[Envelope, JobStatus] | None:
    try:
        envelope, event = parse_event(
            record.topic, decode_headers(record.headers), record.value or b""
        )
    except ValueError as exc:  # the notifier owns no state: a bad record is only skipped
        STATUS_EVENTS.labels("invalid").inc()
        log.warning("invalid job.status record skipped", error=str(exc)[:500])
        return None
    if not isinstance(event, JobStatus):
        return None
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
            parsed = _parse(record)
            if parsed is None:
                return
            delivered = self.hub.publish(StatusMessage.from_event(*parsed))
        STATUS_EVENTS.labels("delivered" if delivered else "unwatched").inc()

    def _watched(self, record: Record) -> bool:
        """A cheap look before the full parse: every replica reads every event, and most of
        them concern nobody connected here. Unreadable records go on to be reported."""
        try:
            value = json.loads(record.value or b"")
            return self.hub.wants(uuid.UUID(value["job_id"]), value.get("owner_id"))
        except (ValueError, TypeError, KeyError, AttributeError):
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
        # Most status events are progress: a look at the state spares the full parse.
        try:
            state = json.loads(record.value or b"{}").get("state")
        except (ValueError, AttributeError):
            return
        if state not in TERMINAL_STATES:
            return
        parsed = _parse(record)
        if parsed is None:
            return
        with telemetry.consume_span(
            record.topic, decode_headers(record.headers), "notifier", self.group_id
        ):
            await self.dispatcher.on_status(parsed[0].id)
