"""Kafka security on Apache Kafka itself: SASL/SCRAM-SHA-512 with the StandardAuthorizer,
users and ACLs created by the set-up step (`mxw kafka-setup`; test_compose_broker.py runs
compose's own commands), then every principal of the plan tried against the broker: each
service can do its job and no more, an outside system is refused job.status and the topics
it was not granted, a service with a wrong password stops at start with a clear message,
and no password shows up in any output."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from confluent_kafka.admin import AdminClient
from mxw_gateway.admin import kafka as gateway_kafka
from mxw_local.apache_kafka import ApacheKafka, unavailable_reason
from mxw_local.infra import free_port
from mxw_notifier.consumer import replica_group_id
from mxw_notifier.settings import NotifierSettings
from mxw_shared import kafka_access, kafka_setup, topics
from mxw_shared.kafka import KafkaAccessError, check_access, client_options, make_producer
from mxw_shared.kafka_access import Acl, Operation, Pattern, Principal, Resource
from mxw_shared.service import StageConsumer
from mxw_shared.settings import CommonSettings
from pydantic import SecretStr

pytestmark = [
    pytest.mark.infra,  # Apache Kafka of its own
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

OUTSIDER = "acme"
SERVICES = kafka_access.SERVICES


@dataclass
class Secured:
    """One SASL broker with the plan applied, and every principal's password."""

    kafka: ApacheKafka
    secrets: Path
    passwords: dict[str, str]
    setup_output: str

    def env(self, name: str) -> dict[str, str]:
        """The MXW_KAFKA_* settings of principal `name`, its password in a file (compose)."""
        return {
            "MXW_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "MXW_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "MXW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "MXW_KAFKA_USERNAME": name,
            "MXW_KAFKA_PASSWORD_FILE": str(kafka_setup.password_path(self.secrets, name)),
        }

    def settings(self, name: str, **overrides: Any) -> CommonSettings:
        values: dict[str, Any] = {
            "service_name": name,
            "kafka_bootstrap_servers": self.kafka.bootstrap_servers,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_username": name,
            "kafka_password": SecretStr(self.passwords.get(name, "")),
        }
        return CommonSettings(**(values | overrides))


def run_setup(secrets: Path, env: dict[str, str]) -> str:
    """`mxw kafka-setup` (the passwords missing under `secrets`, then topics, users, ACLs)."""
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("mxw")),
            "kafka-setup",
            str(secrets),
            "--outside",
            OUTSIDER,
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("kafka-sasl")
    kafka = ApacheKafka(
        root / "kafka", 1, sasl=True, extra_config={"group.initial.rebalance.delay.ms": "0"}
    )
    kafka.start()
    try:
        secrets = root / "secrets"
        # The broker's super user, as compose's broker reads it from the secrets volume.
        admin_file = kafka_setup.password_path(secrets, kafka_access.ADMIN)
        admin_file.parent.mkdir(parents=True)
        admin_file.write_text(kafka.admin.password)
        admin_env = {
            "MXW_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "MXW_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "MXW_KAFKA_USERNAME": kafka_access.ADMIN,
            "MXW_KAFKA_PASSWORD_FILE": str(admin_file),
            "MXW_KAFKA_PARTITIONS": "2",
        }
        output = run_setup(secrets, admin_env)
        names = [kafka_access.ADMIN, *(p.name for p in kafka_access.plan([OUTSIDER]))]
        secured = Secured(kafka, secrets, kafka_setup.read_passwords(secrets, names), output)
        asyncio.run(seed(secured))
        yield secured
    except BaseException:
        print(kafka.logs_tail())
        raise
    finally:
        kafka.stop()


async def seed(secured: Secured) -> None:
    """One record on every topic, written as the admin, for the readers to find."""
    producer = AIOKafkaProducer(**secured.kafka.client_options(), acks="all")
    await producer.start()
    try:
        for topic in topics.all_topics_with_dlq():
            await producer.send_and_wait(topic, b"{}", key=b"seed")
    finally:
        await producer.stop()


async def write(settings: CommonSettings, topic: str) -> None:
    producer = AIOKafkaProducer(**client_options(settings), acks="all", request_timeout_ms=15_000)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"probe"), 30)
    finally:
        await producer.stop()


async def describe(settings: CommonSettings, topic: str) -> None:
    """Raises TopicAuthorizationFailedError when the broker answers the metadata request
    for `topic` with it (no Describe): a consumer's own request gets the same answer, which
    aiokafka logs and then waits on, so the test asks the question directly."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        (found,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if found["error_code"] == TopicAuthorizationFailedError.errno:
        raise TopicAuthorizationFailedError(topic)


async def read(settings: CommonSettings, topic: str, group: str | None) -> int:
    """Records read from `topic` (as a member of `group`, or assigned without one) until
    the first batch arrives; raises what the broker refuses: Describe, Read on the topic
    (the fetch), Read on the group (joining it)."""
    await describe(settings, topic)
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        if group is None:
            await consumer.topics()  # metadata: the partitions of what it may describe
            partitions = consumer.partitions_for_topic(topic) or {0}
            consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
            await consumer.seek_to_beginning()
        else:
            consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            if got := sum(len(records) for records in batch.values()):
                return got
        raise AssertionError(f"nothing read from {topic} in 60 s")
    finally:
        await consumer.stop()


def own_group(principal: Principal) -> str | None:
    """A consumer group the principal may read in (None: it reads without one)."""
    if not principal.groups:
        return None
    group = principal.groups[0]
    return group.name + "probe" if group.pattern == Pattern.prefixed else group.name


def test_setup_ran_and_said_so_without_a_password(secured: Secured) -> None:
    assert "Kafka users and ACLs ready" in secured.setup_output
    assert "topics ready" in secured.setup_output
    for name, password in secured.passwords.items():
        assert password not in secured.setup_output, name


def test_setup_again_changes_nothing_and_removes_acls_the_plan_does_not_give(
    secured: Secured,
) -> None:
    admin = secured.settings(kafka_access.ADMIN)
    stray = Acl(Resource.topic, topics.JOB_STATUS, Pattern.literal, Operation.read)
    client = AdminClient(kafka_setup.admin_config(admin))
    for future in client.create_acls([kafka_setup._binding("chunker", stray)]).values():
        future.result(30)
    principals = kafka_access.plan([OUTSIDER])
    report = kafka_setup.apply_access(admin, principals, secured.passwords)
    assert report.created == []
    assert report.deleted == ["User:chunker ALLOW READ TOPIC:LITERAL:job.status"]
    assert kafka_setup.apply_access(admin, principals, secured.passwords).deleted == []


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_each_service_principal_can_do_its_job_and_no_more(
    secured: Secured, name: str
) -> None:
    principal = SERVICES[name]
    settings = secured.settings(name)
    if principal.writes:
        # The services' own producer: acks=all, idempotent (no IdempotentWrite needed).
        producer = make_producer(settings)
        await producer.start()
        try:
            for topic in principal.writes:
                await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"p"), 30)
        finally:
            await producer.stop()
    else:
        with pytest.raises(TopicAuthorizationFailedError):
            await write(settings, topics.JOB_STATUS)
    with pytest.raises(TopicAuthorizationFailedError):
        await write(settings, "not.ours")
    group = own_group(principal)
    for topic in principal.reads:
        assert await read(settings, topic, group) >= 1, topic
    refused = next(t for t in topics.ALL_TOPICS if t not in principal.reads)
    with pytest.raises(TopicAuthorizationFailedError):
        await read(settings, refused, group)
    if principal.reads:
        with pytest.raises(GroupAuthorizationFailedError):
            await read(settings, principal.reads[0], f"{OUTSIDER}-not-{name}")


class _Recorder:
    """A stage handler that notes what it was given (the consumer under test is real)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.keys: list[bytes | None] = []

    async def handle(self, headers: object, body: bytes, key: bytes | None = None) -> str:
        self.keys.append(key)
        return "done"


async def test_a_workers_stage_consumer_consumes_and_commits_as_its_principal(
    secured: Secured,
) -> None:
    settings = secured.settings("chunker")
    runner = _Recorder(kafka_access.STAGE_INPUTS["chunker"][0])
    consumer = StageConsumer(runner, settings, group_id="chunker")  # type: ignore[arg-type]
    gateway = secured.settings("gateway")

    async def committed() -> int:
        # The gateway's lag view, as its own principal, reads the chunker group's offsets.
        lag = {t: (g, parts) for t, g, parts in await gateway_kafka.consumer_lag(gateway)}
        group, partitions = lag[runner.topic]
        assert group == "chunker"
        return sum(p.committed_offset or 0 for p in partitions)

    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (b"seed" in runner.keys and await committed()):
            await asyncio.sleep(0.2)
        assert b"seed" in runner.keys
        assert await committed() >= 1
    finally:
        await consumer.stop()


async def test_the_gateways_admin_views_read_dead_letters_as_its_principal(
    secured: Secured,
) -> None:
    settings = secured.settings("gateway")
    records, counts = await gateway_kafka.read_dead_letters(settings, limit=20)
    assert set(counts) == {topics.dlq(t) for t in topics.ALL_TOPICS}
    assert all(n >= 1 for n in counts.values())
    first = records[0]
    again = await gateway_kafka.read_one(settings, first.topic, first.partition, first.offset)
    assert again == first


def test_the_notifiers_groups_are_the_ones_it_is_granted() -> None:
    prefix = kafka_access.NOTIFIER_GROUP_PREFIX
    assert replica_group_id("notifier", "pod-1").startswith(prefix)
    assert NotifierSettings.model_fields["webhook_group_id"].default.startswith(prefix)


async def test_an_outside_system_writes_audio_uploaded_and_reads_the_published_topics(
    secured: Secured,
) -> None:
    acme = secured.settings(OUTSIDER)
    await write(acme, topics.AUDIO_UPLOADED)
    for topic in kafka_access.OUTSIDE_READABLE:
        assert await read(acme, topic, f"{OUTSIDER}-reader") >= 1, topic


@pytest.mark.parametrize("topic", [topics.JOB_STATUS, topics.TRANSCRIPT_READY, "not.ours"])
async def test_an_outside_system_may_not_write_anything_else(secured: Secured, topic: str) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await write(secured.settings(OUTSIDER), topic)


@pytest.mark.parametrize(
    "topic", [topics.AUDIO_UPLOADED, topics.JOB_STATUS, topics.dlq(topics.AUDIO_UPLOADED)]
)
async def test_an_outside_system_may_not_read_what_it_was_not_granted(
    secured: Secured, topic: str
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await read(secured.settings(OUTSIDER), topic, f"{OUTSIDER}-reader")


async def test_an_outside_system_reads_only_in_its_own_groups(secured: Secured) -> None:
    for group in ("transcriber", "notifier-webhooks", "acme"):  # "acme" lacks the "-"
        with pytest.raises(GroupAuthorizationFailedError):
            await read(secured.settings(OUTSIDER), topics.EMBEDDINGS_READY, group)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"kafka_username": "intruder"}, "refused principal 'intruder' (SCRAM-SHA-512"),
        ({"kafka_password": SecretStr("wrong-password-1")}, "refused principal 'chunker'"),
        ({"kafka_security_protocol": "PLAINTEXT"}, "MXW_KAFKA_SECURITY_PROTOCOL=PLAINTEXT?"),
        ({"kafka_password": None}, "needs MXW_KAFKA_PASSWORD or MXW_KAFKA_PASSWORD_FILE"),
    ],
)
async def test_the_access_check_names_the_principal_and_the_broker(
    secured: Secured, overrides: dict[str, Any], expected: str
) -> None:
    settings = secured.settings("chunker", **overrides)
    with pytest.raises(KafkaAccessError) as refused:
        await check_access(settings)
    message = str(refused.value)
    assert expected in message
    if "needs" not in expected:
        assert secured.kafka.bootstrap_servers.split(",")[0] in message
    assert "wrong-password-1" not in message
    assert secured.passwords["chunker"] not in message


def start_notifier(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mxw_notifier.main"],
        env={**os.environ, "MXW_LOG_FORMAT": "json", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_service_with_a_wrong_password_stops_at_start_with_a_clear_message(
    secured: Secured, tmp_path: Path
) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-notifiers-password")
    env = secured.env("notifier") | {"MXW_KAFKA_PASSWORD_FILE": str(wrong), "MXW_PORT": "0"}
    proc = start_notifier(env)
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 3, output
    assert "Kafka refused this service; not starting" in output
    assert f"broker {secured.kafka.bootstrap_servers} refused principal 'notifier'" in output
    assert "Traceback" not in output
    assert "not-the-notifiers-password" not in output
    assert secured.passwords["notifier"] not in output


def test_a_service_starts_and_gets_ready_with_its_own_principal(
    secured: Secured, infra: Any
) -> None:
    # The notifier is ready once both its consumers (per-replica fan-out group, shared
    # webhook group) read job.status: its whole Kafka job, under its ACLs alone.
    port = free_port()
    env = infra.env("notifier", port) | secured.env("notifier")
    proc = start_notifier(env | {"MXW_KAFKA_CREATE_TOPICS": "false", "MXW_HOST": "127.0.0.1"})
    ready = False
    try:
        deadline = time.monotonic() + 180
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            if not ready:
                time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert ready, output[-4000:]
    for password in secured.passwords.values():
        assert password not in output


async def test_a_revoked_outside_system_can_no_longer_sign_in(secured: Secured) -> None:
    admin = secured.settings(kafka_access.ADMIN)
    gone = kafka_access.plan(["gone"])[-1]
    kafka_setup.apply_access(admin, [gone], {"gone": "a-password-for-gone"})
    await check_access(secured.settings("gone", kafka_password=SecretStr("a-password-for-gone")))
    report = kafka_setup.revoke(admin, ["gone"])
    assert len(report.deleted) == len(gone.acls())
    with pytest.raises(KafkaAccessError, match="refused principal 'gone'"):
        await check_access(
            secured.settings("gone", kafka_password=SecretStr("a-password-for-gone"))
        )
    assert kafka_setup.revoke(admin, ["gone"]).deleted == []  # again: nothing left to do
    with pytest.raises(ValueError, match="belong to the plan"):
        kafka_setup.revoke(admin, ["chunker"])
