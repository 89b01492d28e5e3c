"""The local dev issuer's public keys over HTTP, for clients and tools that want a JWKS URL
(OIDC discovery style). Only mounted when `MXW_DEV_JWKS_PATH` is set — by `mxw up`; in a
cluster the OIDC provider serves its own keys and this route does not exist."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse


def dev_jwks_router(jwks_path: Path) -> APIRouter:
    router = APIRouter(tags=["auth"])

    @router.get(
        "/.well-known/jwks.json",
        summary="Public signing keys of the local dev issuer",
        openapi_extra={"security": []},
    )
    async def jwks() -> JSONResponse:
        document: dict[str, Any] = json.loads(await asyncio.to_thread(jwks_path.read_text))
        # Public keys only: never hand out anything that could sign.
        keys = [
            {k: v for k, v in key.items() if k not in {"d", "p", "q", "dp", "dq", "qi"}}
            for key in document.get("keys", [])
        ]
        return JSONResponse({"keys": keys}, headers={"Cache-Control": "public, max-age=300"})

    return router
