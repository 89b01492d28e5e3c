"""Broker failover on a three-node Apache Kafka cluster: from a fault on the broker that
leads most partitions to the next record delivered. Never part of the test suite.

Usage:
    .venv/bin/python bench/kafka_failover.py [--rounds 3] [--partitions 6]

Starts a KRaft cluster of three combined nodes on loopback (mxw_local.apache_kafka) and a
topic configured as the pipeline's are (replication 3, min.insync.replicas 2). A producer
with the pipeline's own settings (acks=all, idempotent; mxw_shared.kafka.producer_options)
writes a record every 10 ms, round robin over the partitions, and a consumer of its own
notes when each arrives. Each round, alternating so that load drifting on the machine hits
both alike:

- kill -9 of the busiest leader (what the fault test does): the controller notices only
  when the broker's session expires (broker.session.timeout.ms, 9 s by default);
- its baseline, a controlled stop (SIGTERM) of the busiest leader: the broker hands its
  leadership over before it exits.

Per fault it prints the time to the next record delivered (any partition) and to the
first record delivered on every partition the victim led (the slowest partition: what a
stage whose partition it was waits), then the medians and the ratio kill / stop. The
victim is started again and every replica back in sync before the next round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from mxw_local.apache_kafka import ApacheKafka
from mxw_local.kafka_cluster import DeliveryClock, leadership, partition_states, wait_in_sync
from mxw_shared import topics
from mxw_shared.kafka import apply_topics, producer_options
from mxw_shared.settings import CommonSettings

TOPIC = "bench.failover"
INTERVAL_S = 0.01


async def produce(kafka: ApacheKafka, partitions: int, stop: asyncio.Event) -> None:
    """A record every INTERVAL_S, round robin over the partitions, until `stop`; every
    send acknowledged (acks=all) before it returns."""
    settings = CommonSettings(kafka_bootstrap_servers=kafka.bootstrap_servers)
    producer = AIOKafkaProducer(**kafka.client_options(), **producer_options(settings))
    await producer.start()
    try:
        sent: list[asyncio.Future[object]] = []
        while not stop.is_set():
            sent.append(await producer.send(TOPIC, b"x", partition=len(sent) % partitions))
            await asyncio.sleep(INTERVAL_S)
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def one_fault(kafka: ApacheKafka, how: str, partitions: int) -> tuple[float, float]:
    states = await partition_states(kafka, [TOPIC])
    counts = leadership(states)
    victim = max(counts, key=lambda broker: counts[broker])
    led = {s.partition for s in states if s.leader == victim}
    clock = DeliveryClock(kafka, (TOPIC,))
    await clock.start()
    stop = asyncio.Event()
    producing = asyncio.create_task(produce(kafka, partitions, stop))
    try:
        await asyncio.sleep(2)  # steady flow first
        fault_at, fault_ms = time.monotonic(), int(time.time() * 1000)
        if how == "kill -9":
            kafka.kill_node(victim)
        else:
            await asyncio.to_thread(kafka.stop_node, victim)
        next_s = await clock.delivered_after(fault_at, fault_ms, timeout_s=120)
        slowest_s = await clock.every_partition_delivered_after(
            fault_at, fault_ms, {(TOPIC, p) for p in led}, timeout_s=120
        )
    finally:
        stop.set()
        await producing
        await clock.stop()
    await asyncio.to_thread(kafka.start_node, victim)
    await wait_in_sync(kafka, 180)
    return next_s, slowest_s


async def bench(kafka: ApacheKafka, rounds: int, partitions: int) -> None:
    (like,) = [s for s in topics.topic_specs(partitions, 3) if s.name == topics.AUDIO_UPLOADED]
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        await apply_topics(admin, [topics.TopicSpec(TOPIC, partitions, 3, like.config)])
    finally:
        await admin.close()
    await wait_in_sync(kafka, 180)
    figures: dict[str, list[tuple[float, float]]] = {"kill -9": [], "SIGTERM": []}
    for round_no in range(1, rounds + 1):
        for how in figures:
            next_s, slowest_s = await one_fault(kafka, how, partitions)
            figures[how].append((next_s, slowest_s))
            print(
                f"round {round_no}, {how}: next record {next_s:.2f} s,"
                f" every partition it led {slowest_s:.2f} s"
            )
    medians = {
        how: (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
        for how, rows in figures.items()
    }
    for how, (next_s, slowest_s) in medians.items():
        print(f"median, {how}: next record {next_s:.2f} s, every partition {slowest_s:.2f} s")
    kill, term = medians["kill -9"], medians["SIGTERM"]
    print(
        f"kill -9 / SIGTERM: next record {kill[0] / term[0]:.1f}x,"
        f" every partition {kill[1] / term[1]:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as root, ApacheKafka(Path(root), brokers=3) as kafka:
        started = time.monotonic()
        asyncio.run(bench(kafka, args.rounds, args.partitions))
        print(f"load after: {os.getloadavg()}; {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
