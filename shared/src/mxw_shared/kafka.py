"""Kafka clients with safe defaults, and topic creation."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream.kafka import KafkaBroker

from mxw_shared import topics
from mxw_shared.logging import get_logger
from mxw_shared.settings import CommonSettings

log = get_logger(__name__)


def producer_options(settings: CommonSettings) -> dict[str, Any]:
    """acks=all always; idempotence where the broker supports it (see settings)."""
    return {
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotent_producer,
        "linger_ms": 5,
        "request_timeout_ms": 30_000,
        "retry_backoff_ms": 200,
    }


def make_producer(settings: CommonSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.service_name}-{settings.instance_id}",
        **producer_options(settings),
    )


def make_broker(settings: CommonSettings) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"{settings.service_name}-{settings.instance_id}",
        acks="all",
        enable_idempotence=settings.kafka_idempotent_producer,
        logger=None,
    )


async def ensure_topics(settings: CommonSettings) -> list[str]:
    """Create every pipeline topic and its dead-letter topic; returns the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics.all_topics_with_dlq() if t not in existing]
        if wanted:
            new = [
                NewTopic(
                    name,
                    num_partitions=1 if name.endswith(".dlq") else settings.kafka_partitions,
                    replication_factor=settings.kafka_replication_factor,
                )
                for name in wanted
            ]
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                await admin.create_topics(new)
            log.info("topics created", topics=wanted)
        return wanted
    finally:
        await admin.close()


@dataclass(frozen=True)
class Unreadable:
    """A record the client could not parse, skipped."""

    partition: TopicPartition
    offset: int
    error: UnicodeDecodeError

    @property
    def reason(self) -> str:
        return (
            f"invalid event: record at offset {self.offset} of partition"
            f" {self.partition.partition} cannot be read (a header name is not UTF-8:"
            f" {self.error})"
        )


async def skip_unreadable(
    consumer: AIOKafkaConsumer, partitions: set[TopicPartition]
) -> Unreadable | None:
    """Call after `getmany` raised UnicodeDecodeError: a record whose header *name* is not
    UTF-8, which aiokafka cannot parse and raises on at every fetch, so the consumer would
    never get past it. Finds which of `partitions` it is next on, moves that partition past
    it and says which; None when none of them fails now. The records the probe reads from
    the other partitions are read again (their positions are restored)."""
    for tp in sorted(partitions):
        offset = await consumer.position(tp)
        try:
            await consumer.getmany(tp, timeout_ms=1000, max_records=1)
        except UnicodeDecodeError as exc:
            consumer.seek(tp, offset + 1)
            return Unreadable(tp, offset, exc)
        consumer.seek(tp, offset)
    return None
