"""Kafka clients with safe defaults, who they authenticate as, and topic creation.

Every client (producer, consumer, admin) is built with `client_options(settings)`: the
bootstrap servers and the service's own SASL principal, so no client can be started as
someone else or without credentials on a secured cluster."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from mxw_shared import topics
from mxw_shared.logging import get_logger
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


async def ensure_topics(settings: CommonSettings) -> list[str]:
    """Create every pipeline topic and its dead-letter topic; returns the ones created."""
    admin = AIOKafkaAdminClient(**client_options(settings))
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
