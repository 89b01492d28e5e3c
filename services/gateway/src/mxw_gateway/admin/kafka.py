"""Reading the broker for admins: consumer lag and dead-lettered records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from mxw_shared import topics
from mxw_shared.kafka import client_options
from mxw_shared.settings import CommonSettings
from mxw_shared.stages import PIPELINE


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


async def _partitions(settings: CommonSettings, names: list[str]) -> list[TopicPartition]:
    """The partitions of those of `names` that exist and this principal may describe.
    (A consumer's partitions_for_topic knows only topics it already tracks.)"""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return [
        TopicPartition(t["topic"], p["partition"])
        for t in sorted(described, key=lambda t: str(t["topic"]))
        if not t["error_code"]
        for p in sorted(t["partitions"], key=lambda p: int(p["partition"]))
    ]


@asynccontextmanager
async def _consumer(settings: CommonSettings) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
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


async def consumer_lag(settings: CommonSettings) -> list[tuple[str, str, list[PartitionLag]]]:
    """(topic, group, its partitions) per stage topic. Committed offsets are read with a
    consumer of the group that never subscribes (so it never joins or disturbs the group);
    the admin client's OffsetFetch is not understood by tansu."""
    out = []
    partitions = await _partitions(settings, sorted({t for t, _ in PIPELINE.stage_groups}))
    for topic, group in PIPELINE.stage_groups:
        tps = [tp for tp in partitions if tp.topic == topic]
        consumer = AIOKafkaConsumer(
            **client_options(settings), group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            starts = await consumer.beginning_offsets(tps) if tps else {}
            ends = await consumer.end_offsets(tps) if tps else {}
            lags = [
                PartitionLag(tp.partition, starts[tp], ends[tp], await consumer.committed(tp))
                for tp in tps
            ]
        finally:
            await consumer.stop()
        out.append((topic, group, lags))
    return out


async def read_dead_letters(
    settings: CommonSettings, limit: int, timeout_s: float = 5.0
) -> tuple[list[RawRecord], dict[str, int]]:
    """The newest `limit` records over every dead-letter topic, and how many each holds."""
    found: list[RawRecord] = []
    counts: dict[str, int] = {}
    tps = await _partitions(settings, [topics.dlq(t) for t in topics.ALL_TOPICS])
    if not tps:
        return [], {}
    async with _consumer(settings) as consumer:
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


class BrokerTimeout(Exception):
    """The broker did not hand over a record it holds within the time allowed."""


async def read_one(
    settings: CommonSettings, topic: str, partition: int, offset: int, timeout_s: float = 20.0
) -> RawRecord | None:
    """The record at `offset`, or None where the partition does not hold it. One fetch can
    come back empty on a busy broker, so fetching goes on until `timeout_s`."""
    tp = TopicPartition(topic, partition)
    if tp not in await _partitions(settings, [topic]):
        return None
    async with _consumer(settings) as consumer:
        starts = await consumer.beginning_offsets([tp])
        ends = await consumer.end_offsets([tp])
        if not starts[tp] <= offset or ends[tp] <= starts[tp]:
            return None
        # The embedded tansu (0.6) reports the end offset as the last batch's first offset
        # + 1, so an offset at or past that end may still lie in the last batch: read that
        # batch from its reported start. (On Apache Kafka the end is exact, and reading
        # from end - 1 finds only the last record.)
        past_end = offset >= ends[tp]
        consumer.assign([tp])
        consumer.seek(tp, ends[tp] - 1 if past_end else offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := deadline - loop.time()) > 0:
            batch = await consumer.getmany(tp, timeout_ms=int(left * 1000))
            records = batch.get(tp, [])
            for record in records:
                if record.offset < offset:
                    continue  # a broker may hand back the whole batch the offset lies in
                # A compacted or aborted record is skipped: the first one is past it.
                return _raw(record) if record.offset == offset else None
            if records and past_end:
                return None  # the last batch, read whole, ends before the offset
        raise BrokerTimeout(f"{topic}:{partition}:{offset} not fetched within {timeout_s:g} s")
