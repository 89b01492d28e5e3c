"""Topic configuration declared once (mxw_shared.topics) and applied by the same code
(mxw_shared.kafka.ensure_topics) on both brokers: the embedded tansu broker and Apache Kafka,
one of each for this module (the session's broker holds topics other tests may change). What
the broker reports afterwards is read back with its own admin API (Metadata, DescribeConfigs)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import InvalidReplicationFactorError
from mxw_local.apache_kafka import ApacheKafka, unavailable_reason
from mxw_local.infra import EmbeddedKafka, free_port
from mxw_shared import topics
from mxw_shared.kafka import apply_topics, ensure_topics
from mxw_shared.kafka import main as kafka_cli
from mxw_shared.settings import CommonSettings

BROKERS = ("tansu", "kafka")


@dataclass(frozen=True)
class Described:
    partitions: int
    replication_factor: int
    config: dict[str, str]


@pytest.fixture(scope="module")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    if reason := unavailable_reason():
        pytest.skip(reason)
    with ApacheKafka(tmp_path_factory.mktemp("kafka"), 1) as kafka:
        yield kafka


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    kafka = EmbeddedKafka(free_port(), log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(params=BROKERS)
def bootstrap(request: pytest.FixtureRequest) -> str:
    if request.param == "tansu":
        return request.getfixturevalue("tansu").bootstrap_servers
    kafka: ApacheKafka = request.getfixturevalue("apache_kafka")
    return kafka.bootstrap_servers


@pytest.fixture
async def admin(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def describe(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 30
) -> dict[str, Described]:
    """Partitions, replication factor and every setting of each topic, as the broker reports
    them; waits (to a deadline) for topics just created to reach the broker's metadata."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = {t["topic"]: t for t in await admin.describe_topics(names)}
        if all(metadata[n]["error_code"] == 0 for n in names) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    found = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            name = resource["resource_name"]
            assert resource["error_code"] == 0, resource
            assert metadata[name]["error_code"] == 0, metadata[name]
            partitions = metadata[name]["partitions"]
            found[name] = Described(
                len(partitions),
                min(len(p["replicas"]) for p in partitions),
                {e["config_names"]: e["config_value"] for e in resource["config_entries"]},
            )
    return found


def spec(name: str, partitions: int, replication_factor: int = 1) -> topics.TopicSpec:
    """A topic of a test's own, configured like a pipeline topic."""
    (like,) = [
        s
        for s in topics.topic_specs(partitions, replication_factor)
        if s.name == topics.AUDIO_UPLOADED
    ]
    return topics.TopicSpec(name, partitions, replication_factor, like.config)


def test_every_topic_and_dead_letter_topic_is_declared() -> None:
    specs = topics.topic_specs(6, 3)
    assert [s.name for s in specs] == topics.all_topics_with_dlq()
    for s in specs:
        assert s.replication_factor == 3
        assert s.partitions == (1 if s.is_dlq else 6), s
        assert s.config["cleanup.policy"] == "delete", s  # no topic holds state (topics.py)
        assert s.config["min.insync.replicas"] == "2", s
        retention = topics.DLQ_RETENTION_MS if s.is_dlq else topics.EVENT_RETENTION_MS
        assert s.config["retention.ms"] == str(retention), s
    # acks=all keeps accepting writes with one broker down: min.insync.replicas < replicas.
    assert [topics.min_insync_replicas(r) for r in (1, 2, 3, 5)] == [1, 1, 2, 4]


@pytest.mark.parametrize(("partitions", "replication"), [(0, 1), (3, 0), (-1, 3)])
def test_impossible_partitions_or_replication_are_refused(
    partitions: int, replication: int
) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        topics.topic_specs(partitions, replication)


@pytest.mark.infra  # its broker fixture starts tansu or reaches Apache Kafka by name
async def test_the_broker_reports_the_declared_configuration_and_a_second_run_changes_nothing(
    bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    settings = CommonSettings(kafka_bootstrap_servers=bootstrap)
    await ensure_topics(settings)
    specs = topics.topic_specs(settings.kafka_partitions, settings.kafka_replication_factor)
    described = await describe(admin, [s.name for s in specs])
    for s in specs:
        got = described[s.name]
        assert (got.partitions, got.replication_factor) == (
            s.partitions,
            s.replication_factor,
        ), s.name
        assert {k: got.config.get(k) for k in s.config} == dict(s.config), s.name
    again = await ensure_topics(settings)
    assert not again.changed, again
    assert again.left == {}


async def test_apache_kafka_brings_existing_topics_in_line(apache_kafka: ApacheKafka) -> None:
    admin = AIOKafkaAdminClient(**apache_kafka.client_options())
    await admin.start()
    try:
        name = f"drift.{uuid.uuid4().hex[:8]}"
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    1,
                    1,
                    topic_configs={"retention.ms": "1000", "max.message.bytes": "300000"},
                )
            ]
        )
        declared = spec(name, 3)
        report = await apply_topics(admin, [declared])
        assert report.created == []
        assert report.grown == {name: 3}
        assert report.reconfigured == {name: dict(declared.config)}
        assert report.left == {}
        got = (await describe(admin, [name]))[name]
        assert got.partitions == 3
        assert {k: got.config[k] for k in declared.config} == dict(declared.config)
        # An override nobody declared stays (AlterConfigs alone would have reset it).
        assert got.config["max.message.bytes"] == "300000"
        again = await apply_topics(admin, [declared])
        assert not again.changed
        assert again.left == {}

        # What it cannot change is reported, not silently kept or half done.
        fewer = topics.TopicSpec(name, 2, 2, declared.config)
        left = (await apply_topics(admin, [fewer])).left[name]
        assert any("3 partitions, declared 2: partitions cannot be removed" in w for w in left)
        assert any("replication factor 1, declared 2" in w for w in left)
        # A topic the cluster cannot hold fails loudly: one broker cannot keep 2 replicas.
        with pytest.raises(InvalidReplicationFactorError, match=f"drift.x{name}"):
            await apply_topics(admin, [spec(f"drift.x{name}", 1, 2)])
    finally:
        await admin.close()


async def test_tansu_says_what_it_cannot_change(tansu: EmbeddedKafka) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=tansu.bootstrap_servers)
    await admin.start()
    try:
        name = f"drift.{uuid.uuid4().hex[:8]}"
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs={"retention.ms": "1000"})])
        report = await apply_topics(admin, [spec(name, 3)])
        assert not report.changed
        assert report.left == {
            name: [
                "1 partitions: the broker cannot add partitions",
                "its settings differ and the broker cannot change them",
            ]
        }
        got = (await describe(admin, [name]))[name]
        assert (got.partitions, got.config["retention.ms"]) == (1, "1000")
    finally:
        await admin.close()


def test_ensure_topics_runs_as_a_set_up_command(apache_kafka: ApacheKafka) -> None:
    env = {
        **os.environ,
        "MXW_KAFKA_BOOTSTRAP_SERVERS": apache_kafka.bootstrap_servers,
        "MXW_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, "-m", "mxw_shared.kafka", "ensure-topics"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("topics: "), done.stdout
    assert "differing where it cannot be changed" in done.stdout
    assert " 0 differing" in done.stdout


def test_an_impossible_partition_count_is_refused_before_the_broker_is_touched(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MXW_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # nothing listens
    monkeypatch.setenv("MXW_KAFKA_PARTITIONS", "0")
    with pytest.raises(SystemExit) as exited:
        kafka_cli(["ensure-topics"])
    assert exited.value.code == 2
    assert "ensure-topics: topics need at least 1 partition, got 0" in capsys.readouterr().err
