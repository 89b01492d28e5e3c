"""The job.status consumer. Every replica must see every status event, so each one reads in
a consumer group of its own, from the latest offset: history comes from the database."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from faststream.kafka import KafkaBroker, KafkaMessage
from mxw_shared import telemetry, topics
from mxw_shared.contracts import JobStatus, decode_headers, parse_event
from mxw_shared.logging import get_logger
from prometheus_client import Counter

from mxw_notifier.domain import StatusMessage
from mxw_notifier.fanout import JobFanout

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


class StatusConsumer:
    """Feeds `fanout` from job.status; `live` once the group owns the topic's partitions and
    their starting offsets are fixed, so nothing published after that point is missed."""

    def __init__(self, broker: KafkaBroker, fanout: JobFanout, group_id: str) -> None:
        self.fanout = fanout
        self.group_id = group_id
        self._tracker = _AssignmentTracker()
        self.live = False

        self.subscriber = broker.subscriber(
            topics.JOB_STATUS,
            group_id=group_id,
            auto_offset_reset="latest",
            listener=self._tracker,
            title=f"{group_id}:{topics.JOB_STATUS}",
        )

        @self.subscriber
        async def handle(msg: KafkaMessage) -> None:
            raw = msg.raw_message
            topic = getattr(raw, "topic", topics.JOB_STATUS)
            headers = decode_headers(getattr(raw, "headers", None))
            # The notification joins the job's trace, under the stage that sent the status.
            with telemetry.consume_span(topic, headers, "notifier", group_id):
                self.on_record(topic, headers, msg.body)

    def on_record(self, topic: str, headers: dict[str, str], body: bytes) -> None:
        try:
            envelope, event = parse_event(topic, headers, body)
        except ValueError as exc:  # the notifier owns no state: a bad record is only skipped
            STATUS_EVENTS.labels("invalid").inc()
            log.warning("invalid job.status record skipped", error=str(exc)[:500])
            return
        assert isinstance(event, JobStatus)
        delivered = self.fanout.publish(StatusMessage.from_event(envelope, event))
        STATUS_EVENTS.labels("delivered" if delivered else "unwatched").inc()

    async def wait_live(self) -> None:
        """Until partitions are assigned and each one's position is resolved to the end."""
        while not self._tracker.assigned:
            self._tracker.changed.clear()
            await self._tracker.changed.wait()
        consumer: AIOKafkaConsumer | None = getattr(self.subscriber, "consumer", None)
        if consumer is not None:
            for partition in list(self._tracker.assigned):
                await consumer.position(partition)
        self.live = True
        log.info(
            "job.status consumer live",
            group_id=self.group_id,
            partitions=len(self._tracker.assigned),
        )

    async def check_ready(self) -> None:
        if not self.live or not self._tracker.assigned:
            raise RuntimeError("job.status consumer has no partitions yet")
