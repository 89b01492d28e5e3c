"""/readyz is public: it names what is not ready, never the error behind it."""

from __future__ import annotations

from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from mxw_gateway.main import create_app
from mxw_gateway.settings import GatewaySettings

SECRET = "postgresql://mxwhisper:hunter2@10.0.0.7:5432/mxwhisper"


async def test_l11_readyz_names_what_is_not_ready_without_the_error(infra: Any) -> None:
    app = create_app(
        infra.settings(GatewaySettings, "gateway", blob_root=infra.root / "readyz-blobs")
    )

    class Embedder:
        async def check(self) -> None:
            raise ConnectionError(f"cannot reach {SECRET}")

    class UnreachableDatabase:
        async def fetchval(self, *_: object) -> None:
            raise OSError(f"connection to {SECRET} refused")

    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        runtime = app.state.runtime
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            assert (await client.get("/readyz")).status_code == 200
            runtime.ready_checks.append(Embedder().check)
            pool = runtime._pool
            runtime._pool = UnreachableDatabase()  # what an outage looks like to the check
            try:
                response = await client.get("/readyz")
            finally:
                runtime._pool = pool
                runtime.ready_checks.pop()
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    detail = response.json()["detail"]
    assert "database unavailable" in detail
    assert "Embedder not ready" in detail
    assert "hunter2" not in response.text
    assert "10.0.0.7" not in response.text
    assert "Error" not in response.text  # no exception reprs
