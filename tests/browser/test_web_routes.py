"""The web page's routes on an in-process gateway (real Postgres and broker): what the page
gets, the headers that keep it safe, and the dev sign-in that exists only when enabled
(MXW_DEV_SIGN_IN) with the dev issuer."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from mxw_gateway.main import create_app
from mxw_gateway.settings import GatewaySettings

Start = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(scope="module")
def start(infra: Any) -> Start:
    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        values: dict[str, Any] = {"blob_root": infra.root / "web-blobs", **overrides}
        app = create_app(infra.settings(GatewaySettings, "gateway", **values))
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as c:
                yield c

    return run


@pytest.fixture(scope="module")
async def dev_gateway(
    start: Start, infra: Any, dev_issuer: Any
) -> AsyncIterator[httpx.AsyncClient]:
    async with start(
        dev_jwks_path=dev_issuer.jwks_path,
        dev_sign_in=True,
        web_notifier_url="https://notify.example:8443/",
    ) as client:
        yield client


async def test_the_page_and_every_module_it_loads_are_served(dev_gateway: httpx.AsyncClient):
    assert (await dev_gateway.get("/")).headers["location"] == "/app/"
    page = await dev_gateway.get("/app/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    wanted = set(re.findall(r'(?:src|href)="/app/static/([\w.]+)"', page.text))
    assert {"app.js", "style.css"} <= wanted
    seen: set[str] = set()
    while wanted - seen:
        name = (wanted - seen).pop()
        seen.add(name)
        asset = await dev_gateway.get(f"/app/static/{name}")
        assert asset.status_code == 200, name
        if name.endswith(".js"):
            assert asset.headers["content-type"].startswith("text/javascript")
            # Follow the module graph: every import must be served too.
            wanted |= set(re.findall(r'from "\./([\w.]+)"', asset.text))
    assert {"api.js", "auth.js", "dom.js", "live.js", "views.js"} <= seen


async def test_only_whitelisted_assets_are_served(dev_gateway: httpx.AsyncClient):
    for name in ("routes.py", "..%2Froutes.py", "index.html.bak", "nope.js"):
        response = await dev_gateway.get(f"/app/static/{name}")
        assert response.status_code == 404, name
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_the_page_runs_only_its_own_code(dev_gateway: httpx.AsyncClient):
    headers = (await dev_gateway.get("/app/")).headers
    csp = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'"
    assert "unsafe" not in headers["content-security-policy"]
    # The notifier's WebSocket origin (from its public URL), and nothing else off-site.
    assert csp["connect-src"] == "'self' wss://notify.example:8443"
    assert csp["frame-ancestors"] == "'none'"
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


async def test_config_and_dev_sign_in_with_the_dev_issuer(dev_gateway: httpx.AsyncClient):
    config = (await dev_gateway.get("/app/config.json")).json()
    assert config["dev_sign_in"] is True
    assert config["oidc"] is None
    assert config["notifier_ws"] == "wss://notify.example:8443"
    signed = await dev_gateway.post("/app/dev-sign-in", json={"user": "dana", "admin": True})
    assert signed.status_code == 200
    assert signed.headers["cache-control"] == "no-store"
    auth = {"Authorization": f"Bearer {signed.json()['access_token']}"}
    assert (await dev_gateway.get("/jobs", headers=auth)).status_code == 200
    users = await dev_gateway.get("/admin/users", headers=auth)  # admin was asked for
    assert users.status_code == 200
    # Signing in made the user (looked up by id: the list's first page is other tests' users).
    dana = await dev_gateway.get("/admin/users/dana", headers=auth)
    assert dana.status_code == 200
    assert dana.json()["id"] == "dana"
    plain = await dev_gateway.post("/app/dev-sign-in", json={"user": "erin"})
    plain_auth = {"Authorization": f"Bearer {plain.json()['access_token']}"}
    assert (await dev_gateway.get("/admin/users", headers=plain_auth)).status_code == 403


async def test_dev_sign_in_refuses_bad_names(dev_gateway: httpx.AsyncClient):
    for body in ({"user": ""}, {"user": "a b"}, {"user": "x" * 65}, {"user": "ok", "x": 1}):
        response = await dev_gateway.post("/app/dev-sign-in", json=body)
        assert response.status_code == 422, body
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_without_the_dev_issuer_there_is_no_dev_sign_in(start: Start):
    async with start(
        dev_jwks_path=None,
        web_oidc_issuer="https://id.example.org/realms/mxw",
        web_oidc_client_id="mxwhisper-web",
    ) as client:
        config = (await client.get("/app/config.json")).json()
        assert config["dev_sign_in"] is False
        assert config["oidc"] == {
            "issuer": "https://id.example.org/realms/mxw",
            "client_id": "mxwhisper-web",
            "scopes": "openid profile email",
        }
        response = await client.post("/app/dev-sign-in", json={"user": "mallory", "admin": True})
        assert response.status_code in (404, 405)
        assert "access_token" not in response.text
        # The provider's origin may be called (discovery, token endpoint) from the page.
        csp = (await client.get("/app/")).headers["content-security-policy"]
        assert "connect-src 'self' ws://127.0.0.1:8001 https://id.example.org;" in csp
