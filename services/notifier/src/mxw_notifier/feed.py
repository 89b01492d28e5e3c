"""The status feed: `WS /ws/jobs/{job_id}` (history, then live events, until the job ends)
and `GET /jobs/{job_id}/events` (the history) for clients without WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter as Tally
from typing import Any

from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from mxw_shared.auth import AuthError, JwksVerifier, Principal
from mxw_shared.db import Pool
from mxw_shared.logging import get_logger
from mxw_shared.problems import Problem
from prometheus_client import Counter, Gauge
from starlette.websockets import WebSocketState

from mxw_notifier import repository
from mxw_notifier.domain import (
    bearer_from_header,
    may_watch,
    parse_job_id,
    select_history,
    websocket_credentials,
)
from mxw_notifier.fanout import JobFanout, Subscription
from mxw_notifier.settings import NotifierSettings

log = get_logger(__name__)

OPEN_CONNECTIONS = Gauge("mxw_notifier_open_connections", "Open job status WebSockets")
CLOSED_CONNECTIONS = Counter(
    "mxw_notifier_connections_closed_total", "Job status WebSockets closed", ["reason"]
)

# Application close codes (4000-4999): 4401 / 4404 mirror the HTTP statuses.
CLOSE_NORMAL = 1000
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY = 4429


class Feed:
    """State shared by every connection of one process."""

    def __init__(
        self, settings: NotifierSettings, verifier: JwksVerifier, fanout: JobFanout
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.fanout = fanout
        self.pool: Pool | None = None
        self._per_user: Tally[str] = Tally()

    def db(self) -> Pool:
        assert self.pool is not None, "feed used before start-up"
        return self.pool

    async def authorize(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("a bearer token is required")
        return await self.verifier.verify(token)

    async def watchable_job(self, principal: Principal, raw_job_id: str) -> uuid.UUID | None:
        job_id = parse_job_id(raw_job_id)
        if job_id is None:
            return None
        owner = await repository.job_owner(self.db(), job_id)
        return job_id if may_watch(principal, owner) else None

    async def serve_websocket(self, websocket: WebSocket, raw_job_id: str) -> None:
        credentials = websocket_credentials(
            websocket.query_params.get("token"),
            websocket.headers.get("authorization"),
            websocket.scope.get("subprotocols") or (),
        )
        # Accept first: a close before accept reaches the client as a bare HTTP 403,
        # without the code that tells it why.
        await websocket.accept(subprotocol=credentials.subprotocol)
        try:
            principal = await self.authorize(credentials.token)
        except AuthError as exc:
            await self._close(websocket, CLOSE_UNAUTHORIZED, str(exc)[:120], "unauthorized")
            return
        job_id = await self.watchable_job(principal, raw_job_id)
        if job_id is None:
            await self._close(websocket, CLOSE_NOT_FOUND, "job not found", "not-found")
            return
        if self._per_user[principal.sub] >= self.settings.max_connections_per_user:
            await self._close(websocket, CLOSE_TOO_MANY, "too many connections", "too-many")
            return

        self._per_user[principal.sub] += 1
        OPEN_CONNECTIONS.inc()
        # Subscribe before reading history: an event committed after the read arrives live,
        # one committed before it is in the history, and the overlap is de-duplicated.
        subscription = self.fanout.subscribe(job_id)
        try:
            reason = await self._stream(websocket, subscription, websocket.query_params)
        finally:
            self.fanout.unsubscribe(subscription)
            OPEN_CONNECTIONS.dec()
            self._per_user[principal.sub] -= 1
            if self._per_user[principal.sub] <= 0:
                del self._per_user[principal.sub]
        CLOSED_CONNECTIONS.labels(reason).inc()

    async def _stream(self, websocket: WebSocket, subscription: Subscription, params: Any) -> str:
        sender = asyncio.create_task(self._send_feed(websocket, subscription, params.get("after")))
        receiver = asyncio.create_task(_until_disconnect(websocket))
        dropped = asyncio.create_task(subscription.dropped.wait())
        try:
            await asyncio.wait({sender, receiver, dropped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, receiver, dropped):
                task.cancel()
            for task in (sender, receiver, dropped):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if sender.done() and not sender.cancelled() and sender.exception() is None:
            await self._close(websocket, CLOSE_NORMAL, "job finished", None)
            return "finished"
        if subscription.dropped.is_set():
            log.info("slow WebSocket client dropped", job_id=str(subscription.job_id))
            await self._close(websocket, CLOSE_TRY_AGAIN_LATER, "client too slow", None)
            return "slow"
        if receiver.done() and not receiver.cancelled():
            return "client-closed"
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            log.warning("status feed failed", error=repr(sender.exception()))
            await self._close(websocket, 1011, "internal error", None)
            return "error"
        return "client-closed"

    async def _send_feed(
        self, websocket: WebSocket, subscription: Subscription, after: str | None
    ) -> None:
        """History, then live events, until a terminal state went out."""
        entries = await repository.job_history(self.db(), subscription.job_id)
        history = select_history(entries, after)
        for status in history.to_send:
            await websocket.send_text(status.to_json())
        if history.finished:
            return
        seen = history.seen
        while True:
            status = await subscription.get()
            if status.event_id in seen:
                continue
            seen.add(status.event_id)
            await websocket.send_text(status.to_json())
            if status.terminal:
                return

    async def _close(
        self, websocket: WebSocket, code: int, reason: str, metric: str | None
    ) -> None:
        if metric is not None:
            CLOSED_CONNECTIONS.labels(metric).inc()
        if websocket.application_state == WebSocketState.DISCONNECTED:
            return
        # A client that stopped reading may never take the close frame.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                websocket.close(code=code, reason=reason), self.settings.close_timeout_s
            )

    async def history(self, request: Request, raw_job_id: str, after: str | None) -> Any:
        token = bearer_from_header(request.headers.get("authorization"))
        try:
            principal = await self.authorize(token)
        except AuthError as exc:
            raise Problem(
                401, "Unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from exc
        job_id = await self.watchable_job(principal, raw_job_id)
        if job_id is None:
            raise Problem(404, "Not Found", "job not found")
        view = select_history(await repository.job_history(self.db(), job_id), after)
        return {
            "job_id": str(job_id),
            "finished": view.finished,
            "events": [status.to_dict() for status in view.to_send],
        }


async def _until_disconnect(websocket: WebSocket) -> None:
    """Read and ignore client messages; returns when the client goes away."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return


def feed_router(feed: Feed) -> APIRouter:
    router = APIRouter(tags=["status"])

    @router.websocket("/ws/jobs/{job_id}")
    async def job_status_socket(websocket: WebSocket, job_id: str) -> None:
        await feed.serve_websocket(websocket, job_id)

    @router.get("/jobs/{job_id}/events")
    async def job_events(
        request: Request,
        job_id: str,
        after: str | None = Query(
            default=None, max_length=200, description="job_events id or event id to resume after"
        ),
    ) -> Any:
        return await feed.history(request, job_id, after)

    return router
