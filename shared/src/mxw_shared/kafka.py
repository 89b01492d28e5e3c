"""Kafka clients with safe defaults, who they authenticate as, and the topics as declared
in mxw_shared.topics.

Every client (producer, consumer, admin) is built with `client_options(settings)`: the
bootstrap servers and the service's own SASL principal, so no client can be started as
someone else or without credentials on a secured cluster."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from mxw_shared import topics
from mxw_shared.logging import configure_logging, get_logger
from mxw_shared.settings import CommonSettings

log = get_logger(__name__)


def security_options(settings: CommonSettings) -> dict[str, Any]:
    """The aiokafka keyword arguments that say who this service is (empty for PLAINTEXT).
    ValueError when SASL is asked for without a username and password."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    username, password = settings.kafka_sasl_credentials()
    options: dict[str, Any] = {
        "security_protocol": protocol,
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": username,
        "sasl_plain_password": password,
    }
    if protocol == "SASL_SSL":
        cafile = settings.kafka_ssl_cafile
        options["ssl_context"] = create_ssl_context(cafile=str(cafile) if cafile else None)
    return options


def client_options(settings: CommonSettings) -> dict[str, Any]:
    """Bootstrap servers and security: what every producer, consumer and admin client of
    the project is built with."""
    return {"bootstrap_servers": settings.kafka_bootstrap_servers, **security_options(settings)}


def principal(settings: CommonSettings) -> str:
    """Who this service is to the broker, for messages (never the password)."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return "no principal (PLAINTEXT, unauthenticated)"
    return (
        f"principal {settings.kafka_username!r}"
        f" ({settings.kafka_sasl_mechanism} over {settings.kafka_security_protocol})"
    )


class KafkaAccessError(RuntimeError):
    """The broker refused this service's credentials, or no broker could be reached."""


async def check_access(settings: CommonSettings, timeout_s: float = 10.0) -> None:
    """Connect to the bootstrap servers as this service's principal and authenticate, so
    that a wrong password, an unknown user or a wrong security protocol stops a service at
    start with one message naming the principal and the broker. (aiokafka's own clients log
    such an error and report only "Unable to bootstrap", or keep retrying.) Raises
    KafkaAccessError."""
    who = principal(settings)
    try:
        options = security_options(settings)
    except ValueError as exc:
        raise KafkaAccessError(f"Kafka credentials incomplete: {exc}") from exc
    failures: list[str] = []
    for server in settings.kafka_bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    int(port),
                    client_id=f"{settings.service_name}-{settings.instance_id}",
                    request_timeout_ms=int(timeout_s * 1000),
                    **options,
                ),
                timeout_s,
            )
        except SaslAuthenticationFailed as exc:
            raise KafkaAccessError(
                f"Kafka broker {host}:{port} refused {who}: {exc}. Check MXW_KAFKA_USERNAME"
                " and MXW_KAFKA_PASSWORD (or MXW_KAFKA_PASSWORD_FILE) against the users"
                " created by the Kafka set-up (docs/deploy.md, 'Kafka security')."
            ) from None
        except (OSError, KafkaError, TimeoutError, ValueError) as exc:
            failures.append(f"{host}:{port}: {type(exc).__name__}: {exc}")
            continue
        try:
            # A SASL listener answers ApiVersions before authentication, then drops a
            # client that skipped it: one metadata round trip tells the two apart.
            await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
        except (OSError, KafkaError, TimeoutError) as exc:
            failures.append(f"{host}:{port}: {type(exc).__name__}: {exc}")
            continue
        finally:
            conn.close()
        return
    raise KafkaAccessError(
        f"no Kafka broker of {settings.kafka_bootstrap_servers} accepted a connection as"
        f" {who} ({'; '.join(failures)}). Is the broker up, and does it expect"
        f" MXW_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}?"
    )


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
        client_id=f"{settings.service_name}-{settings.instance_id}",
        **client_options(settings),
        **producer_options(settings),
    )


async def ensure_topics(settings: CommonSettings) -> TopicsReport:
    """Every topic and dead-letter topic as mxw_shared.topics declares them, with this
    deployment's partitions and replication factor (see apply_topics)."""
    specs = topics.topic_specs(settings.kafka_partitions, settings.kafka_replication_factor)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        return await apply_topics(admin, specs)
    finally:
        await admin.close()


# Where a described setting's value comes from (DescribeConfigs' config_source).
DYNAMIC_TOPIC_CONFIG = 1


@dataclass
class TopicsReport:
    """What apply_topics changed, and the differences it found but left as they are."""

    created: list[str] = field(default_factory=list)
    reconfigured: dict[str, dict[str, str]] = field(default_factory=dict)  # the settings set
    grown: dict[str, int] = field(default_factory=dict)  # partitions now
    left: dict[str, list[str]] = field(default_factory=dict)  # why, per topic

    @property
    def changed(self) -> bool:
        return bool(self.created or self.reconfigured or self.grown)

    def leave(self, topic: str, why: str) -> None:
        self.left.setdefault(topic, []).append(why)
        log.warning("topic differs from its declaration", topic=topic, left_as_is=why)

    def summary(self) -> str:
        return (
            f"{len(self.created)} created, {len(self.reconfigured)} reconfigured,"
            f" {len(self.grown)} given more partitions,"
            f" {len(self.left)} differing where it cannot be changed"
        )


async def apply_topics(admin: AIOKafkaAdminClient, specs: list[topics.TopicSpec]) -> TopicsReport:
    """Create the missing topics with their configuration, and bring existing ones in line:
    settings that differ are set (AlterConfigs; the topic's other overrides are kept),
    partitions are added up to the declared count (never removed). A replication factor is
    never changed (that moves replicas: kafka-reassign-partitions) and neither is anything
    the broker refuses or does not support: the embedded tansu broker creates topics with
    their configuration and describes it, but has neither AlterConfigs nor CreatePartitions
    (its topics live in memory, so ensure_topics always creates them). Those differences
    are logged and returned in `left`; a topic that cannot be created raises."""
    report = TopicsReport()
    existing = set(await admin.list_topics())
    missing = [s for s in specs if s.name not in existing]
    if missing:
        response = await admin.create_topics(
            [
                NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.config))
                for s in missing
            ]
        )
        for result in response.to_object()["topic_errors"]:
            code = result["error_code"]
            if code == TopicAlreadyExistsError.errno:
                continue  # another process won the race: checked below like any other
            if code:
                raise for_code(code)(
                    f"creating topic {result['topic']} failed: {result.get('error_message')}"
                )
            report.created.append(result["topic"])
        if report.created:
            log.info("topics created", topics=report.created)
    await _align(admin, [s for s in specs if s.name not in report.created], report)
    return report


async def _align(
    admin: AIOKafkaAdminClient, specs: list[topics.TopicSpec], report: TopicsReport
) -> None:
    if not specs:
        return
    described = await _describe_topics(admin, [s.name for s in specs])
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    configs = {
        r["resource_name"]: r
        for response in await admin.describe_configs(resources)
        for r in response.to_object()["resources"]
    }
    alter: dict[str, dict[str, str]] = {}
    for spec in specs:
        topic, config = described[spec.name], configs[spec.name]
        if topic["error_code"] or config["error_code"]:
            error = for_code(topic["error_code"] or config["error_code"])
            report.leave(spec.name, f"cannot be described: {error.__name__}")
            continue
        partitions = topic["partitions"]
        if len(partitions) < spec.partitions:
            await _grow(admin, spec, len(partitions), report)
        elif len(partitions) > spec.partitions:
            report.leave(
                spec.name,
                f"{len(partitions)} partitions, declared {spec.partitions}:"
                " partitions cannot be removed",
            )
        replicas = min(len(p["replicas"]) for p in partitions)
        if replicas != spec.replication_factor:
            report.leave(
                spec.name,
                f"replication factor {replicas}, declared {spec.replication_factor}:"
                " replicas are moved by a reassignment (kafka-reassign-partitions), not here",
            )
        entries = config["config_entries"]
        current = {e["config_names"]: e["config_value"] for e in entries}
        if any(current.get(k) != v for k, v in spec.config.items()):
            overrides = {
                e["config_names"]: e["config_value"]
                for e in entries
                if e["config_source"] == DYNAMIC_TOPIC_CONFIG and e["config_value"] is not None
            }
            # AlterConfigs replaces every override of the topic: keep the ones not declared.
            alter[spec.name] = overrides | dict(spec.config)
    if alter:
        await _reconfigure(admin, alter, {s.name: s for s in specs}, report)


async def _describe_topics(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = 10.0
) -> dict[str, Any]:
    """Metadata of `names`, waiting a little for a topic another process has just created
    (the brokers learn of it shortly after the controller)."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = {t["topic"]: t for t in await admin.describe_topics(names)}
        codes = [described[n]["error_code"] for n in names]
        if not any(c and for_code(c).retriable for c in codes) or time.monotonic() > deadline:
            return described
        await asyncio.sleep(0.2)


async def _grow(
    admin: AIOKafkaAdminClient, spec: topics.TopicSpec, now: int, report: TopicsReport
) -> None:
    try:
        await admin.create_partitions({spec.name: NewPartitions(spec.partitions)})
    except IncompatibleBrokerVersion:
        report.leave(spec.name, f"{now} partitions: the broker cannot add partitions")
    except KafkaError as exc:
        report.leave(spec.name, f"{now} partitions: adding them failed: {exc!r}")
    else:
        # A job id may map to another partition from now on: its earlier events stay where
        # they are, so add partitions while no jobs are in flight (docs/deploy.md).
        report.grown[spec.name] = spec.partitions
        log.info("topic partitions added", topic=spec.name, before=now, now=spec.partitions)


async def _reconfigure(
    admin: AIOKafkaAdminClient,
    alter: dict[str, dict[str, str]],
    specs: dict[str, topics.TopicSpec],
    report: TopicsReport,
) -> None:
    resources = [ConfigResource(ConfigResourceType.TOPIC, n, c) for n, c in alter.items()]
    try:
        responses = await admin.alter_configs(resources)
    except IncompatibleBrokerVersion:
        for name in alter:
            report.leave(name, "its settings differ and the broker cannot change them")
        return
    for response in responses:
        for result in response.to_object()["resources"]:
            name = result["resource_name"]
            if result["error_code"]:
                error = for_code(result["error_code"]).__name__
                report.leave(
                    name, f"changing its settings failed: {error} {result['error_message']}"
                )
                continue
            report.reconfigured[name] = dict(specs[name].config)
            log.info("topic reconfigured", topic=name, config=dict(specs[name].config))


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
    consumer: AIOKafkaConsumer, partitions: set[TopicPartition], probe_timeout_ms: int = 10_000
) -> Unreadable | None:
    """Call after `getmany` raised UnicodeDecodeError: a record whose header *name* is not
    UTF-8, which aiokafka cannot parse and raises on at every fetch, so the consumer would
    never get past it. Finds which of `partitions` it is next on, moves that partition past
    it and says which; None when none of them fails now. The records the probe reads from
    the other partitions are read again (their positions are restored).

    aiokafka drops the records of a fetch it parsed before the failing one (the position
    stays where the fetch began), so the probe finds the record only once it is next: a
    consumer that polled more than one record at a time and got None polls one at a time
    until the probe finds it."""
    ends = await consumer.end_offsets(list(partitions))
    for tp in sorted(partitions):
        offset = await consumer.position(tp)
        if offset >= ends.get(tp, 0):
            continue  # nothing to read there: not where the consumer fails
        try:
            # The failed fetch was dropped: the probe waits for a new one, long enough for a
            # slow broker (a probe cut short finds nothing, and the consumer fails again).
            probed = await consumer.getmany(tp, timeout_ms=probe_timeout_ms, max_records=1)
        except UnicodeDecodeError as exc:
            consumer.seek(tp, offset + 1)
            return Unreadable(tp, offset, exc)
        if probed:
            # Read it again in order. (Nothing read: no seek, which would drop the fetch
            # in flight and make the next probe wait for another.)
            consumer.seek(tp, offset)
    return None


def main(argv: list[str] | None = None) -> None:
    """`python -m mxw_shared.kafka ensure-topics`: ensure_topics from the MXW_* settings
    (bootstrap servers, partitions, replication factor), for a set-up step."""
    parser = argparse.ArgumentParser(prog="python -m mxw_shared.kafka")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "ensure-topics",
        help="create every topic as mxw_shared.topics declares it; bring existing ones in line",
    )
    parser.parse_args(argv)
    try:
        settings = CommonSettings()
        topics.topic_specs(settings.kafka_partitions, settings.kafka_replication_factor)
    except ValueError as exc:  # an impossible setting: refused before the broker is touched
        parser.exit(2, f"ensure-topics: {exc}\n")
    configure_logging(settings.log_level, settings.log_format, "ensure-topics")
    report = asyncio.run(ensure_topics(settings))
    print(f"topics: {report.summary()}")


if __name__ == "__main__":
    main()
