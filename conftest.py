"""Session-wide real infrastructure for every test tier: embedded PostgreSQL + pgvector and
the tansu Kafka-protocol broker, started the same way the local stack starts them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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


@pytest.fixture
def service_env(infra: Infra, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Point MXW_* settings of an in-process service at the session infrastructure."""

    def apply(service: str, **extra: str) -> None:
        for key, value in infra.env(service, **extra).items():
            monkeypatch.setenv(key, value)

    return apply
