"""Autoscaling on real lag: after a burst of jobs on Apache Kafka, the consumer-group lag the
gateway's admin system view shows is, partition by partition, what Kafka's own
consumer-groups tool prints and what Kafka's admin API (OffsetFetch, ListOffsets) returns.
The three are read at a quiescent point (the burst published, the groups stopped with their
committed offsets) and read again until the broker stood still across all three."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from mxw_local.apache_kafka import ApacheKafka, libs_dir, unavailable_reason
from mxw_shared import topics
from mxw_shared.contracts import Stage
from mxw_shared.stages import PIPELINE

BURST = 12  # jobs uploaded at once
# (group, topic, partition) -> (committed offset, log-end offset, lag), committed ones only
Reading = dict[tuple[str, str, int], tuple[int, int, int]]


@pytest.fixture(scope="module")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    if reason := unavailable_reason():
        pytest.skip(reason)
    with ApacheKafka(tmp_path_factory.mktemp("kafka"), 1) as kafka:
        yield kafka


@pytest.fixture(scope="module")
async def client(start_gateway: Any, apache_kafka: ApacheKafka) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on Apache Kafka (its start creates the topics), idempotent producer on."""
    async with start_gateway(
        kafka_bootstrap_servers=apache_kafka.bootstrap_servers, kafka_idempotent_producer=True
    ) as c:
        yield c


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    cluster = await consumer._client.fetch_all_metadata()  # the consumer caches no topic
    partitions: set[int] = cluster.partitions_for_topic(topic) or set()
    return partitions


async def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit as a stopped stage consumer leaves its group: offsets, no member."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def admin_api_reading(bootstrap: str) -> Reading:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    found: Reading = {}
    try:
        for topic, group in PIPELINE.stage_groups:
            ends = await end_offsets(bootstrap, topic)
            for tp, meta in (await admin.list_consumer_group_offsets(group)).items():
                if tp.topic == topic and meta.offset >= 0:
                    found[(group, topic, tp.partition)] = (
                        meta.offset,
                        ends[tp],
                        ends[tp] - meta.offset,
                    )
    finally:
        await admin.close()
    return found


def tool_reading(bootstrap: str) -> tuple[Reading, set[tuple[str, str, int]]]:
    """kafka-consumer-groups.sh --describe --all-groups, parsed: the rows with a committed
    offset, and the (group, topic, partition) rows it prints "-" for."""
    done = subprocess.run(
        [
            "java",
            "-cp",
            f"{libs_dir()}/*",
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--all-groups",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    committed: Reading = {}
    unknown = set()
    stage = set(PIPELINE.stage_groups)
    for line in done.stdout.splitlines():
        cells = line.split()
        # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
        if len(cells) < 6 or cells[0] == "GROUP" or (cells[1], cells[0]) not in stage:
            continue
        key = (cells[0], cells[1], int(cells[2]))
        if cells[3] == "-":
            assert cells[5] == "-", line  # no committed offset: no lag either
            unknown.add(key)
        else:
            committed[key] = (int(cells[3]), int(cells[4]), int(cells[5]))
    return committed, unknown


def gateway_reading(view: dict[str, Any]) -> tuple[Reading, dict[tuple[str, str, int], int]]:
    """The admin view's partitions with a committed offset, and the log-end offsets of
    those without one."""
    committed: Reading = {}
    uncommitted = {}
    for entry in view["consumer_lag"]:
        for p in entry["partitions"]:
            key = (entry["group"], entry["topic"], p["partition"])
            if p["committed_offset"] is None:
                assert p["lag"] is None, entry
                uncommitted[key] = p["log_end_offset"]
            else:
                committed[key] = (p["committed_offset"], p["log_end_offset"], p["lag"])
    return committed, uncommitted


async def test_lag_is_the_same_in_the_admin_view_kafkas_tool_and_the_admin_api(
    client: httpx.AsyncClient,
    apache_kafka: ApacheKafka,
    token: Any,
    upload_short: Any,
) -> None:
    bootstrap = apache_kafka.bootstrap_servers
    admin, user = token("lag-admin", admin=True), token("lag-user")
    # The burst: the gateway's outbox relay publishes one audio.uploaded per job.
    for _ in range(BURST):
        response = await upload_short(client, user)
        assert response.status_code == 202, response.text
    deadline = time.monotonic() + 60
    while sum((await end_offsets(bootstrap, topics.AUDIO_UPLOADED)).values()) < BURST:
        assert time.monotonic() < deadline, "the burst did not reach audio.uploaded"
        await asyncio.sleep(0.2)

    # The transcriber worked through half of two partitions and stopped; the third it never
    # committed on. The embedder is one record behind on every partition that has records;
    # the chunker has never run (no group).
    uploaded = await end_offsets(bootstrap, topics.AUDIO_UPLOADED)
    # The partition it never committed on is one with records: they count as waiting.
    first, second, never = sorted(uploaded, key=lambda tp: (uploaded[tp], tp.partition))
    await commit(
        bootstrap,
        PIPELINE[Stage.transcribe].service,
        {first: uploaded[first] // 2, second: uploaded[second] // 2},
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(5):
            await producer.send_and_wait(topics.CHUNKS_READY, b"{}", key=f"job-{n}".encode())
    finally:
        await producer.stop()
    chunks = await end_offsets(bootstrap, topics.CHUNKS_READY)
    await commit(
        bootstrap,
        PIPELINE[Stage.embed].service,
        {tp: max(e - 1, 0) for tp, e in chunks.items()},
    )

    # Read the three until the broker stood still across them (the outbox relay of this
    # session's database may still publish a straggler).
    deadline = time.monotonic() + 120
    while True:
        before = await admin_api_reading(bootstrap)
        tool, tool_unknown = await asyncio.to_thread(tool_reading, bootstrap)
        response = await client.get("/admin/system", headers=admin)
        assert response.status_code == 200, response.text
        view = response.json()
        ends_after = {t: await end_offsets(bootstrap, t) for t, _ in PIPELINE.stage_groups}
        if before == await admin_api_reading(bootstrap) and all(
            sum(ends_after[e["topic"]].values()) == e["end_offset"] for e in view["consumer_lag"]
        ):
            break
        assert time.monotonic() < deadline, "the broker never stood still"

    gateway, gateway_uncommitted = gateway_reading(view)
    assert gateway == tool == before
    # Stopped groups: the tool lists only partitions with a committed offset; the view
    # lists the others without a lag, and the chunker (no group at all) everywhere so.
    assert tool_unknown == set()
    transcriber = PIPELINE[Stage.transcribe].service
    assert (transcriber, topics.AUDIO_UPLOADED, never.partition) in gateway_uncommitted
    chunker = PIPELINE[Stage.chunk].service
    assert not any(group == chunker for group, _, _ in gateway)
    # The sums are the tool's LAG column summed; waiting adds what was never committed on.
    lags = {(e["group"], e["topic"]): e for e in view["consumer_lag"]}
    for (group, topic), entry in lags.items():
        rows = [lag for (g, t, _), (_, _, lag) in tool.items() if (g, t) == (group, topic)]
        assert entry["lag"] == sum(rows), entry
        held = sum(
            end for (g, t, _), end in gateway_uncommitted.items() if (g, t) == (group, topic)
        )
        assert entry["waiting"] == entry["lag"] + held, entry  # log start is 0 here
    # Kafka's definition, from the offsets this test committed.
    final = ends_after[topics.AUDIO_UPLOADED]
    behind = final[first] - uploaded[first] // 2 + final[second] - uploaded[second] // 2
    assert lags[(transcriber, topics.AUDIO_UPLOADED)]["lag"] == behind
    assert final[never] > 0
    assert lags[(transcriber, topics.AUDIO_UPLOADED)]["waiting"] == behind + final[never]
    embedder = PIPELINE[Stage.embed].service
    assert lags[(embedder, topics.CHUNKS_READY)]["lag"] == sum(1 for e in chunks.values() if e)
