"""Looking at a running Apache Kafka cluster (mxw_local.apache_kafka): who leads which
partition, when every replica is back in sync, and when records reach a consumer after a
fault. Used by the cluster fault tests (tests/faults/test_kafka_cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from mxw_local.apache_kafka import ApacheKafka


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    leader: int  # -1 while it has none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    @property
    def in_sync(self) -> bool:
        return self.leader >= 0 and set(self.isr) == set(self.replicas)


async def partition_states(
    kafka: ApacheKafka, topics: Iterable[str] | None = None
) -> list[PartitionState]:
    """Every partition of `topics` (all topics, internal ones included, by default)."""
    states, _ = await _describe(kafka, topics)
    return states


async def wait_in_sync(kafka: ApacheKafka, timeout_s: float) -> list[PartitionState]:
    """Until every broker is registered and every partition of every topic has a leader and
    all its replicas in sync (a restarted or wiped broker has caught up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            states, brokers = await _describe(kafka, None)
        except Exception as exc:  # brokers still starting, or between leaders
            states, brokers, error = [], set(), repr(exc)
        else:
            error = ""
            everyone = brokers == {n.node_id for n in kafka.nodes}
            if everyone and states and all(s.in_sync for s in states):
                return states
        if time.monotonic() > deadline:
            lagging = [s for s in states if not s.in_sync]
            raise TimeoutError(
                f"not in sync after {timeout_s}s: brokers {sorted(brokers)}, {lagging[:10]} {error}"
            )
        await asyncio.sleep(0.5)


async def _describe(
    kafka: ApacheKafka, topics: Iterable[str] | None
) -> tuple[list[PartitionState], set[int]]:
    """The partitions of `topics` (all by default) and the brokers registered now."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics) if topics is not None else None)
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    states = []
    for topic in described:
        if topic["error_code"] != 0:
            raise RuntimeError(f"describing {topic['topic']} failed: error {topic['error_code']}")
        for p in topic["partitions"]:
            states.append(
                PartitionState(
                    topic["topic"],
                    p["partition"],
                    p["leader"],
                    tuple(p["replicas"]),
                    tuple(p["isr"]),
                )
            )
    return states, {int(b["node_id"]) for b in cluster["brokers"]}


def leadership(states: Iterable[PartitionState]) -> dict[int, int]:
    """How many of these partitions each broker leads."""
    counts: dict[int, int] = {}
    for s in states:
        counts[s.leader] = counts.get(s.leader, 0) + 1
    return counts


@dataclass(frozen=True)
class Arrival:
    at: float  # arrival, monotonic seconds
    created_ms: int  # the record's creation time (producer timestamp), epoch milliseconds
    topic: str
    partition: int


@dataclass
class DeliveryClock:
    """A consumer of its own (no group: it reads every partition of `topics` from their end)
    that notes when each record arrives: "the next event delivered" after a fault is the
    first record created (producer timestamp) after the fault that reaches it."""

    kafka: ApacheKafka
    topics: tuple[str, ...]
    arrivals: list[Arrival] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            **self.kafka.client_options(), enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        partitions = [
            TopicPartition(s.topic, s.partition)
            for s in await partition_states(self.kafka, self.topics)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        self._consumer = consumer
        self._task = asyncio.create_task(self._read(consumer))

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            arrived = time.monotonic()
            for tp, records in batches.items():
                self.arrivals.extend(
                    Arrival(arrived, r.timestamp, tp.topic, tp.partition) for r in records
                )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def delivered_after(
        self, fault_monotonic: float, fault_epoch_ms: int, timeout_s: float
    ) -> float:
        """Seconds from the fault until the first record created after it arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            after = [a.at for a in self.arrivals if a.created_ms >= fault_epoch_ms]
            if after:
                return min(after) - fault_monotonic
            self._check(deadline, "no record created after the fault arrived")
            await asyncio.sleep(0.05)

    async def every_partition_delivered_after(
        self,
        fault_monotonic: float,
        fault_epoch_ms: int,
        partitions: set[tuple[str, int]],
        timeout_s: float,
    ) -> float:
        """Seconds from the fault until each of `partitions` (topic, partition) delivered a
        record created after it: what the consumer of the slowest one waited."""
        deadline = time.monotonic() + timeout_s
        while True:
            firsts: dict[tuple[str, int], float] = {}
            for a in self.arrivals:
                key = (a.topic, a.partition)
                if a.created_ms >= fault_epoch_ms and key in partitions:
                    firsts[key] = min(firsts.get(key, a.at), a.at)
            if set(firsts) == partitions:
                return max(firsts.values()) - fault_monotonic
            self._check(deadline, f"not every one of {sorted(partitions)} delivered")
            await asyncio.sleep(0.05)

    def _check(self, deadline: float, what: str) -> None:
        if self._task is not None and self._task.done():
            self._task.result()  # the reader failed: say why
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} in time")
