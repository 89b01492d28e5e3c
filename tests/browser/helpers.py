"""What the browser tests share besides the browser: an in-process gateway to drive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


@contextlib.asynccontextmanager
async def served_gateway(infra: Any, dev_issuer: Any, name: str) -> AsyncIterator[str]:
    """An in-process gateway served by uvicorn on a free port, dev sign-in on, blobs in its
    own directory; yields its base URL."""
    import uvicorn
    from mxw_gateway.main import create_app
    from mxw_gateway.settings import GatewaySettings
    from mxw_local.infra import free_port

    port = free_port()
    settings = infra.settings(
        GatewaySettings,
        "gateway",
        blob_root=infra.root / f"{name}-blobs",
        dev_jwks_path=dev_issuer.jwks_path,
        dev_sign_in=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve())
    for _ in range(600):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    assert server.started, "the gateway did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 60)
