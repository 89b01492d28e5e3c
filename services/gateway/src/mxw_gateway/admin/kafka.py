"""Reading the broker for admins: consumer lag and dead-lettered records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from mxw_shared import topics


@dataclass(frozen=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int

    @property
    def id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


# Which consumer group works on which topic.
STAGE_GROUPS = {
    topics.AUDIO_UPLOADED: "transcriber",
    topics.TRANSCRIPT_READY: "chunker",
    topics.CHUNKS_READY: "embedder",
}


def _raw(record: ConsumerRecord[bytes, bytes]) -> RawRecord:
    return RawRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value or b"",
        headers={k: v.decode(errors="replace") for k, v in record.headers},
        timestamp_ms=record.timestamp,
    )


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions as the brokers know them now. Read from fresh metadata, not
    the consumer's cache: consumer.topics() fetches metadata without caching it, and on
    Apache Kafka the cache of a consumer that subscribes to nothing holds no topic."""
    cluster = await consumer._client.fetch_all_metadata()
    return [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]


@asynccontextmanager
async def _consumer(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class PartitionLag:
    """One partition of a stage topic as its consumer group stands on it."""

    partition: int
    log_start_offset: int
    log_end_offset: int
    committed_offset: int | None  # None: the group has committed no offset here

    @property
    def lag(self) -> int | None:
        """Kafka's definition (kafka-consumer-groups.sh, LAG): log-end offset minus the
        committed offset; unknown without a committed offset (the tool prints "-")."""
        if self.committed_offset is None:
            return None
        return self.log_end_offset - self.committed_offset

    @property
    def waiting(self) -> int:
        """Records the group has yet to read here: the lag, or without a committed offset
        every record still held (stage consumers start from the earliest)."""
        lag = self.lag
        return self.log_end_offset - self.log_start_offset if lag is None else lag


async def consumer_lag(bootstrap: str) -> list[tuple[str, str, list[PartitionLag]]]:
    """(topic, group, its partitions) per stage topic. Committed offsets are read with a
    consumer of the group that never subscribes (so it never joins or disturbs the group);
    the admin client's OffsetFetch is not understood by tansu."""
    out = []
    for topic, group in STAGE_GROUPS.items():
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = await _partitions(consumer, topic)
            starts = await consumer.beginning_offsets(tps) if tps else {}
            ends = await consumer.end_offsets(tps) if tps else {}
            partitions = [
                PartitionLag(tp.partition, starts[tp], ends[tp], await consumer.committed(tp))
                for tp in tps
            ]
        finally:
            await consumer.stop()
        out.append((topic, group, partitions))
    return out


async def read_dead_letters(
    bootstrap: str, limit: int, timeout_s: float = 5.0
) -> tuple[list[RawRecord], dict[str, int]]:
    """The newest `limit` records over every dead-letter topic, and how many each holds."""
    found: list[RawRecord] = []
    counts: dict[str, int] = {}
    async with _consumer(bootstrap) as consumer:
        tps = [tp for t in topics.ALL_TOPICS for tp in await _partitions(consumer, topics.dlq(t))]
        if not tps:
            return [], {}
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        consumer.assign(tps)
        for tp in tps:
            counts[tp.topic] = counts.get(tp.topic, 0) + ends[tp] - starts[tp]
            consumer.seek(tp, max(starts[tp], ends[tp] - limit))
        pending = {tp for tp in tps if ends[tp] > starts[tp]}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=int(timeout_s * 1000))
            if not batch:
                break  # the broker stopped answering in time; return what we have
            for tp, records in batch.items():
                found.extend(_raw(r) for r in records)
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
    found.sort(key=lambda r: r.timestamp_ms, reverse=True)
    return found[:limit], counts


async def read_one(bootstrap: str, topic: str, partition: int, offset: int) -> RawRecord | None:
    async with _consumer(bootstrap) as consumer:
        tp = TopicPartition(topic, partition)
        if tp not in await _partitions(consumer, topic):
            return None
        ends = await consumer.end_offsets([tp])
        if offset >= ends[tp]:
            return None
        consumer.assign([tp])
        consumer.seek(tp, offset)
        batch = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
        records = batch.get(tp, [])
        return _raw(records[0]) if records and records[0].offset == offset else None
