"""The job.status consumers.

- Fan-out: every replica must see every status event, so each one reads in a consumer group
  of its own, from the latest offset (history comes from the database).
- Webhooks: the replicas share one group, so each terminal event creates its deliveries
  once, and committed offsets carry over what was published while no replica ran.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from mxw_shared import telemetry, topics
from mxw_shared.contracts import Envelope, JobStatus, decode_headers, parse_event
from mxw_shared.logging import get_logger
from prometheus_client import Counter

from mxw_notifier.domain import StatusMessage
from mxw_notifier.fanout import Hub
from mxw_notifier.webhook_domain import event_type
from mxw_notifier.webhooks import WebhookDispatcher

log = get_logger(__name__)

STATUS_EVENTS = Counter(
    "mxw_notifier_status_events_total", "job.status records consumed", ["result"]
)


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


class _LiveGroup:
    """A job.status subscriber that is `live` once its group owns partitions and their
    starting offsets are fixed, so nothing published after that point is missed."""

    name = "job.status consumer"

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self._tracker = _AssignmentTracker()
        self.live = False
        self.subscriber: Any = None

    async def wait_live(self) -> None:
        while not self._tracker.assigned:
            self._tracker.changed.clear()
            await self._tracker.changed.wait()
        consumer: AIOKafkaConsumer | None = getattr(self.subscriber, "consumer", None)
        if consumer is not None:
            for partition in list(self._tracker.assigned):
                await consumer.position(partition)
        self.live = True
        log.info(f"{self.name} live", group_id=self.group_id)

    async def check_ready(self) -> None:
        if not self.live:
            raise RuntimeError(f"{self.name} has no partitions yet")


def _parse(topic: str, headers: dict[str, str], body: bytes) -> tuple[Envelope, JobStatus] | None:
    try:
        envelope, event = parse_event(topic, headers, body)
    except ValueError as exc:  # the notifier owns no state: a bad record is only skipped
        STATUS_EVENTS.labels("invalid").inc()
        log.warning("invalid job.status record skipped", error=str(exc)[:500])
        return None
    assert isinstance(event, JobStatus)
    return envelope, event


class StatusConsumer(_LiveGroup):
    """Feeds `hub` from job.status, in this replica's own group."""

    def __init__(self, broker: KafkaBroker, hub: Hub, group_id: str) -> None:
        super().__init__(group_id)
        self.hub = hub
        self.subscriber = subscriber = broker.subscriber(
            topics.JOB_STATUS,
            group_id=group_id,
            auto_offset_reset="latest",
            listener=self._tracker,
            title=f"{group_id}:{topics.JOB_STATUS}",
        )

        @subscriber
        async def handle(msg: KafkaMessage) -> None:
            raw = msg.raw_message
            topic = getattr(raw, "topic", topics.JOB_STATUS)
            headers = decode_headers(getattr(raw, "headers", None))
            # The notification joins the job's trace, under the stage that sent the status.
            with telemetry.consume_span(topic, headers, "notifier", group_id):
                self.on_record(topic, headers, msg.body)

    def on_record(self, topic: str, headers: dict[str, str], body: bytes) -> None:
        parsed = _parse(topic, headers, body)
        if parsed is None:
            return
        delivered = self.hub.publish(StatusMessage.from_event(*parsed))
        STATUS_EVENTS.labels("delivered" if delivered else "unwatched").inc()


class WebhookTrigger(_LiveGroup):
    """Creates webhook deliveries for terminal job.status events, in the group the replicas
    share; an offset is committed after its deliveries are (a database outage redelivers)."""

    name = "webhook trigger"

    def __init__(self, broker: KafkaBroker, dispatcher: WebhookDispatcher, group_id: str) -> None:
        super().__init__(group_id)
        self.dispatcher = dispatcher
        self.subscriber = subscriber = broker.subscriber(
            topics.JOB_STATUS,
            group_id=group_id,
            auto_offset_reset="latest",
            listener=self._tracker,
            ack_policy=AckPolicy.NACK_ON_ERROR,
            title=f"{group_id}:{topics.JOB_STATUS}",
        )

        @subscriber
        async def handle(msg: KafkaMessage) -> None:
            raw = msg.raw_message
            headers = decode_headers(getattr(raw, "headers", None))
            parsed = _parse(getattr(raw, "topic", topics.JOB_STATUS), headers, msg.body)
            if parsed is None or event_type(parsed[1].state.value) is None:
                return
            try:
                await self.dispatcher.on_status(parsed[0].id)
            except Exception:
                await asyncio.sleep(1.0)  # the record comes again: not in a tight loop
                raise
