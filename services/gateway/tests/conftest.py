"""Gateway test fixtures: the app in-process against the real Postgres and broker."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from mxw_gateway.main import create_app
from mxw_gateway.settings import RATE_LIMITS, GatewaySettings

UPLOAD_LIMIT = 100_000  # above both audio fixtures (19 KB, 75 KB), small enough to exceed


@pytest.fixture(scope="session")
def upload_limit() -> int:
    return UPLOAD_LIMIT


@pytest.fixture(scope="session")
def start_gateway(infra):
    """Async context manager: a running gateway app and an httpx client talking to it."""

    @asynccontextmanager
    async def start(**overrides):
        values = {
            "blob_root": infra.root / "gateway-blobs",
            "max_upload_bytes": UPLOAD_LIMIT,
            "public_base_url": "http://gateway.test",
            # Tests call fast and often; test_hygiene sets real limits to test them.
            "rate_limits": {name: (6000.0, 1000) for name in RATE_LIMITS},
        }
        values.update(overrides)
        app = create_app(infra.settings(GatewaySettings, "gateway", **values))
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gateway.test", timeout=60
            ) as client:
                yield client

    return start


@pytest.fixture(scope="session")
def token(dev_issuer):
    """Authorization headers for a user of the dev issuer."""

    def make(sub: str, **claims) -> dict[str, str]:
        return {"Authorization": f"Bearer {dev_issuer.mint(sub, **claims)}"}

    return make


@pytest.fixture(scope="module")
async def client(start_gateway):
    """A gateway with the test defaults, shared by one module's tests (a module that needs
    other settings defines its own `client`)."""
    async with start_gateway() as c:
        yield c


@pytest.fixture(scope="session")
def short_ogg() -> bytes:
    """The committed 3.4 s English speech fixture."""
    return (Path(__file__).resolve().parents[3] / "tests/fixtures/audio/short_en.ogg").read_bytes()


@pytest.fixture(scope="session")
def upload_short(short_ogg):
    """Upload audio (the short fixture unless `data` is given) as a new job (force=true)."""

    async def upload(
        client, headers, *, filename: str = "short_en.ogg", data: bytes | None = None
    ) -> httpx.Response:
        return await client.post(
            "/jobs",
            headers=headers,
            params={"force": "true"},
            files={
                "file": (filename, short_ogg if data is None else data, "application/octet-stream")
            },
        )

    return upload
