"""Session-wide real infrastructure for every test tier: embedded PostgreSQL + pgvector and
the tansu Kafka-protocol broker, started the same way the local stack starts them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The key the gateway seals webhook secrets under and the notifier opens them with: one per
# test session, for every in-process service and every process the tests start.
if "MXW_WEBHOOK_SECRET_KEY" not in os.environ:
    from cryptography.fernet import Fernet

    os.environ["MXW_WEBHOOK_SECRET_KEY"] = Fernet.generate_key().decode()


@dataclass(frozen=True)
class Infra:
    dsn: str
    bootstrap_servers: str
    root: Path

    def env(self, service: str, port: int = 0, **extra: str) -> dict[str, str]:
        """MXW_* settings for a service running against this infrastructure."""
        env = {
            "MXW_SERVICE_NAME": service,
            "MXW_DATABASE_URL": self.dsn,
            "MXW_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "MXW_KAFKA_IDEMPOTENT_PRODUCER": "false",
            "MXW_BLOB_ROOT": str(self.root / "blobs"),
            "MXW_AUTH_JWKS_URL": (self.root / "auth" / "jwks.json").as_uri(),
            "MXW_PORT": str(port),
            "MXW_RETRY_BACKOFF_S": "0.1",
            "MXW_OUTBOX_POLL_INTERVAL_S": "0.2",
        }
        env.update(extra)
        return env

    def settings(self, cls: type[T], service: str, **overrides: object) -> T:
        """Settings of an in-process service pointed at this infrastructure."""
        values: dict[str, object] = {
            k.removeprefix("MXW_").lower(): v for k, v in self.env(service).items()
        }
        values.update(overrides)
        return cls(**values)


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    from mxw_local.infra import EmbeddedKafka, EmbeddedPostgres, free_port
    from mxw_shared.devissuer import DevIssuer
    from mxw_shared.migrate import migrate

    root = tmp_path_factory.mktemp("infra")
    postgres = EmbeddedPostgres(root / "pg", free_port())
    kafka = EmbeddedKafka(free_port(), log_path=root / "tansu.log")
    dsn = postgres.start()
    try:
        kafka.start()
        asyncio.run(migrate(dsn))
        DevIssuer.ensure(root / "auth")
        yield Infra(dsn=dsn, bootstrap_servers=kafka.bootstrap_servers, root=root)
    finally:
        kafka.stop()
        postgres.stop()


@pytest.fixture(scope="session")
def dev_issuer(infra: Infra):  # type: ignore[no-untyped-def]
    from mxw_shared.devissuer import DevIssuer

    return DevIssuer.ensure(infra.root / "auth")


# ---- helpers shared by integration tests: real Postgres rows, real Kafka records ----


@pytest.fixture(scope="session")
async def db(infra: Infra):  # type: ignore[no-untyped-def]
    from mxw_shared.db import create_pool

    pool = await create_pool(infra.dsn, 1, 5)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def make_job(db):  # type: ignore[no-untyped-def]
    """Insert a job row the way the gateway does; returns its id."""
    import json
    import uuid

    async def make(
        owner_id: str = "alice",
        *,
        audio_uri: str = "file:///nonexistent",
        sha256: str = "0" * 64,
        **options: object,
    ) -> uuid.UUID:
        """`audio_uri`/`sha256` matter where the stage sweeper may rebuild the event from
        this row (a worker killed mid-job); other tests publish their own."""
        job_id = uuid.uuid4()
        await db.execute(
            "INSERT INTO jobs (id, owner_id, filename, audio_uri, sha256, options) "
            "VALUES ($1, $2, 'test.wav', $3, $4, $5::jsonb)",
            job_id,
            owner_id,
            audio_uri,
            sha256,
            json.loads(json.dumps(options)),
        )
        return job_id

    return make


@pytest.fixture(scope="session")
async def kafka_producer(infra: Infra):  # type: ignore[no-untyped-def]
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture(scope="session")
def publisher():  # type: ignore[no-untyped-def]
    """publisher(producer) -> `publish` through that producer (a module's own broker)."""
    from mxw_shared.contracts import Envelope, EventData

    def through(producer):  # type: ignore[no-untyped-def]
        async def send(event: EventData, envelope: Envelope | None = None) -> Envelope:
            envelope = envelope or Envelope.for_event(event, source="tests")
            await producer.send_and_wait(
                event.topic,
                value=event.model_dump_json().encode(),
                key=str(event.job_id).encode(),
                headers=[(k, v.encode()) for k, v in envelope.to_headers().items()],
            )
            return envelope

        return send

    return through


@pytest.fixture(scope="session")
def publish(kafka_producer, publisher):  # type: ignore[no-untyped-def]
    """Publish an event straight to Kafka as another system would; returns its envelope."""
    return publisher(kafka_producer)


@pytest.fixture(scope="session")
def read_topic(infra: Infra):  # type: ignore[no-untyped-def]
    """Collect the records of one job on a topic, from the beginning, until `count` arrived
    or `timeout_s` passed. Returns (headers, value) pairs."""
    import json
    import time
    import uuid

    from aiokafka import AIOKafkaConsumer

    async def read(
        topic: str, job_id: uuid.UUID, count: int = 1, timeout_s: float = 60.0
    ) -> list[tuple[dict[str, str], dict[str, object]]]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=infra.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        found: list[tuple[dict[str, str], dict[str, object]]] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(found) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        if r.key == str(job_id).encode():
                            headers = {k: v.decode() for k, v in r.headers}
                            try:
                                value = json.loads(r.value)
                            except ValueError:
                                value = {"raw": r.value.decode(errors="replace")}
                            found.append((headers, value))
        finally:
            await consumer.stop()
        return found

    return read


@pytest.fixture(scope="session")
def wait_for(db):  # type: ignore[no-untyped-def]
    """Poll a SQL query until `predicate(value)` holds; returns the value."""
    import asyncio
    import time

    async def wait(sql: str, *args: object, predicate=bool, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = await db.fetchval(sql, *args)
            if predicate(value):
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting on {sql!r}: last value {value!r}")

    return wait


@pytest.fixture(scope="session")
def s3_server():  # type: ignore[no-untyped-def]
    """Context manager: a real S3-protocol server (moto) on 127.0.0.1 with `bucket`
    created; yields its endpoint URL while the AWS_* variables point obstore at it
    (restored afterwards)."""
    from contextlib import contextmanager

    import boto3
    from moto.server import ThreadedMotoServer

    @contextmanager
    def serve(bucket: str) -> Iterator[str]:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
            with pytest.MonkeyPatch.context() as env:
                for name, value in {
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_ALLOW_HTTP": "true",
                    "AWS_ACCESS_KEY_ID": "test",
                    "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_REGION": "us-east-1",
                }.items():
                    env.setenv(name, value)
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
                yield endpoint
        finally:
            server.stop()

    return serve
