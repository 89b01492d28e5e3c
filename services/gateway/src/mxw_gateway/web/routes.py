"""The web page: one HTML document and its static modules under /app, the page's public
configuration, and — only when MXW_DEV_SIGN_IN is set (the local stack) — a simple sign-in
that mints a dev token. The page itself calls the same public API as any client, with a
bearer token."""

from __future__ import annotations

import json
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import JSONResponse, RedirectResponse, Response
from mxw_shared.devissuer import DevIssuer
from mxw_shared.logging import get_logger
from mxw_shared.problems import Problem
from pydantic import BaseModel, ConfigDict, Field

from mxw_gateway.settings import GatewaySettings

log = get_logger(__name__)

# Whitelisted assets (no path from the request ever reaches the file system).
_ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "auth.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "views.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
DEV_TOKEN_TTL_S = 12 * 3600


class DevSignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
    admin: bool = False


def _read_asset(name: str) -> bytes:
    return (resources.files("mxw_gateway.web") / "static" / name).read_bytes()


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def websocket_base(notifier_url: str) -> str:
    """ws(s):// form of the notifier's public URL, without a trailing slash."""
    url = notifier_url.rstrip("/")
    if url.startswith("https://"):
        return "wss://" + url.removeprefix("https://")
    if url.startswith("http://"):
        return "ws://" + url.removeprefix("http://")
    return url


def content_security_policy(settings: GatewaySettings) -> str:
    """Only our own scripts and styles run; the page may talk to the API (same origin), the
    notifier's WebSocket and the OIDC provider's token endpoint, and play blob: audio."""
    connect = ["'self'"]
    ws_origin = _origin(websocket_base(settings.web_notifier_url))
    if ws_origin:
        connect.append(ws_origin)
    if settings.web_oidc_issuer and (issuer := _origin(settings.web_oidc_issuer)):
        connect.append(issuer)
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "media-src 'self' blob:",
            "connect-src " + " ".join(connect),
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class DevSignInUnavailable(RuntimeError):
    """MXW_DEV_SIGN_IN is set but there is no dev issuer to sign with."""


def dev_issuer_for(settings: GatewaySettings) -> DevIssuer | None:
    """The local dev issuer when dev sign-in is enabled (MXW_DEV_SIGN_IN; its signing key
    lies beside the JWKS the gateway serves), else None: no route can mint tokens."""
    if not settings.dev_sign_in:
        return None
    jwks_path = settings.dev_jwks_path
    if jwks_path is None:
        raise DevSignInUnavailable("MXW_DEV_SIGN_IN needs MXW_DEV_JWKS_PATH (the dev issuer)")
    key_path = jwks_path.parent / "dev-signing-key.pem"
    if not key_path.is_file() or not jwks_path.is_file():
        raise DevSignInUnavailable(f"MXW_DEV_SIGN_IN: no dev signing key beside {jwks_path}")
    keys = json.loads(jwks_path.read_text()).get("keys") or []
    if not keys or not keys[0].get("kid"):
        raise DevSignInUnavailable(f"MXW_DEV_SIGN_IN: {jwks_path} names no key id")
    return DevIssuer(key_path=key_path, jwks_path=jwks_path, kid=str(keys[0]["kid"]))


def web_router(settings: GatewaySettings) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    csp = content_security_policy(settings)
    page_headers = {"Content-Security-Policy": csp, "Cache-Control": "no-cache"}
    dev_issuer = dev_issuer_for(settings)
    config: dict[str, Any] = {
        "notifier_ws": websocket_base(settings.web_notifier_url),
        "dev_sign_in": dev_issuer is not None,
        "oidc": (
            {
                "issuer": settings.web_oidc_issuer.rstrip("/"),
                "client_id": settings.web_oidc_client_id,
                "scopes": settings.web_oidc_scopes,
            }
            if settings.web_oidc_issuer and settings.web_oidc_client_id
            else None
        ),
        "models": settings.openai_models,
        "chunking": ["auto", "local", "llm", "fixed"],
        "formats": ["txt", "srt", "vtt", "json"],
    }

    @router.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/app/", status_code=307)

    @router.get("/app")
    async def app_no_slash() -> RedirectResponse:
        return RedirectResponse("/app/", status_code=307)

    @router.get("/app/")
    async def page() -> Response:
        return Response(_read_asset("index.html"), media_type="text/html", headers=page_headers)

    @router.get("/app/config.json")
    async def page_config() -> JSONResponse:
        return JSONResponse(config, headers={"Cache-Control": "no-cache"})

    @router.get("/app/static/{name}")
    async def asset(name: str) -> Response:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise Problem(404, "Not found", "no such asset")
        return Response(
            _read_asset(name),
            media_type=media_type,
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": csp},
        )

    if dev_issuer is not None:
        log.warning(
            "dev sign-in enabled (MXW_DEV_SIGN_IN): anyone who reaches this gateway can mint"
            " admin tokens; for the local stack only"
        )

        @router.post("/app/dev-sign-in")
        async def dev_sign_in(body: DevSignIn) -> JSONResponse:
            token = dev_issuer.mint(
                body.user,
                admin=body.admin,
                name=body.user,
                ttl_s=DEV_TOKEN_TTL_S,
                audience=settings.auth_audience,
                issuer=settings.auth_issuer,
            )
            return JSONResponse(
                {"access_token": token, "token_type": "Bearer", "expires_in": DEV_TOKEN_TTL_S},
                headers={"Cache-Control": "no-store"},
            )

    return router
