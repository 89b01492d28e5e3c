"""OIDC sign-in in the page: authorization code + PKCE (S256), in a real browser, against an
in-process gateway served over HTTP.

The identity provider is a small one written here, since no OIDC provider runs in this
environment: it serves discovery, hands out a one-time code bound to the PKCE challenge,
and redeems it only for the matching verifier, redirect URI and client — so the test fails
whenever the page's half of the protocol is wrong. Its access token is signed with the dev
issuer's key, which the gateway trusts in tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from mxw_gateway.main import create_app
from mxw_gateway.settings import GatewaySettings
from mxw_local.infra import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CLIENT_ID = "mxwhisper-web"


@dataclass
class Provider:
    url: str
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)


def provider_app(provider: Provider, dev_issuer: Any) -> Starlette:
    codes: dict[str, dict[str, str]] = {}
    cors = {"Access-Control-Allow-Origin": "*"}

    async def discovery(request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": provider.url,
                "authorization_endpoint": f"{provider.url}/authorize",
                "token_endpoint": f"{provider.url}/token",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
            },
            headers=cors,
        )

    async def authorize(request: Request) -> Response:
        query = dict(request.query_params)
        provider.authorize_requests.append(query)
        if query.get("response_type") != "code" or query.get("client_id") != CLIENT_ID:
            return JSONResponse({"error": "unauthorized_client"}, status_code=400)
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        # The user is taken as already signed in at the provider (its own session).
        code = secrets.token_urlsafe(16)
        codes[code] = query
        return RedirectResponse(
            f"{query['redirect_uri']}?code={code}&state={query['state']}", status_code=302
        )

    async def token(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        provider.token_requests.append(form)
        asked = codes.pop(form.get("code", ""), None)  # one use only
        verifier = form.get("code_verifier", "")
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if (
            asked is None
            or form.get("grant_type") != "authorization_code"
            or form.get("client_id") != CLIENT_ID
            or form.get("redirect_uri") != asked["redirect_uri"]
            or challenge != asked["code_challenge"]
        ):
            return JSONResponse({"error": "invalid_grant"}, status_code=400, headers=cors)
        access = dev_issuer.mint("olivia", name="Olivia Example", ttl_s=600)
        return JSONResponse(
            {"access_token": access, "token_type": "Bearer", "expires_in": 600}, headers=cors
        )

    return Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/authorize", authorize),
            Route("/token", token, methods=["POST"]),
        ]
    )


async def serve(app: Any, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 60
    while not server.started:
        assert not task.done(), "server stopped during start-up"
        assert time.monotonic() < deadline, "server did not start"
        await asyncio.sleep(0.05)
    return server, task


@pytest.fixture(scope="module")
async def sites(infra: Any, dev_issuer: Any) -> AsyncIterator[tuple[str, Provider]]:
    provider_port, gateway_port = free_port(), free_port()
    provider = Provider(url=f"http://127.0.0.1:{provider_port}")
    settings = infra.settings(
        GatewaySettings,
        "gateway",
        blob_root=infra.root / "oidc-blobs",
        dev_jwks_path=None,  # a production-like gateway: OIDC only
        web_oidc_issuer=provider.url,
        web_oidc_client_id=CLIENT_ID,
    )
    servers = [
        await serve(provider_app(provider, dev_issuer), provider_port),
        await serve(create_app(settings), gateway_port),
    ]
    try:
        yield f"http://127.0.0.1:{gateway_port}", provider
    finally:
        for server, task in servers:
            server.should_exit = True
            await asyncio.wait_for(task, 60)


async def test_sign_in_with_authorization_code_and_pkce(browser: Any, sites: tuple[str, Provider]):
    gateway, provider = sites
    ctx = await browser.new_context()
    page = await ctx.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(f"{gateway}/app/#/search")
        assert await page.locator("#dev-user").count() == 0  # no dev sign-in here
        await page.click("#oidc-sign-in")
        await page.wait_for_selector("#nav:not([hidden])")
        # Back on the page it started from, signed in, with the code gone from the URL.
        assert page.url == f"{gateway}/app/#/search"
        assert await page.text_content("#who") == "Olivia Example"
        await page.wait_for_selector("#q")
        asked = provider.authorize_requests[-1]
        assert asked["redirect_uri"] == f"{gateway}/app/"
        assert asked["scope"] == "openid profile email"
        assert len(asked["state"]) >= 16
        assert asked["nonce"]
        redeemed = provider.token_requests[-1]
        assert 43 <= len(redeemed["code_verifier"]) <= 128  # RFC 7636
        assert redeemed["code_verifier"] not in str(asked)  # only its hash travelled first
        # The token works against the API: olivia's (empty) job list, not a 401.
        await page.click("nav a[data-route=jobs]")
        await page.wait_for_selector("ul.jobs li.empty")
        async with httpx.AsyncClient(base_url=gateway) as client:
            token = await page.evaluate("JSON.parse(sessionStorage.getItem('mxw.session')).token")
            me = await client.get("/jobs", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200
        assert not errors, errors
    finally:
        await ctx.close()


async def test_an_answer_this_browser_did_not_ask_for_is_refused(
    browser: Any, sites: tuple[str, Provider]
):
    gateway, provider = sites
    ctx = await browser.new_context()
    page = await ctx.new_page()
    page.set_default_timeout(30_000)
    try:
        tokens_before = len(provider.token_requests)
        # A code injected into the redirect (login CSRF): no matching state in this tab.
        await page.goto(f"{gateway}/app/?code=stolen&state=guess#/jobs")
        await page.wait_for_selector("#toast.shown")
        assert "does not match" in (await page.text_content("#toast") or "")
        assert await page.is_hidden("#nav")
        assert await page.locator("#oidc-sign-in").count() == 1
        assert "code=" not in page.url
        assert len(provider.token_requests) == tokens_before  # never redeemed
    finally:
        await ctx.close()
