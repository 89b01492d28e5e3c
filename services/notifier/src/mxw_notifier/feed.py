"""The status feeds.

- `WS /ws/jobs/{job_id}`: one job; its history after `after`, then live events, until the job
  ends (closed 1000).
- `WS /ws/jobs`: every job of the caller (admins: `all=true` for every job); live events, and
  for the jobs named in `resume=<job>:<seq>,…` what was missed first.
- `GET /jobs/{job_id}/events`: the same single-job feed as Server-Sent Events (resume with
  Last-Event-ID), or the history as JSON for a client that does not ask for
  `text/event-stream`.

Every message carries the job's `seq`; a feed sends each job's events in seq order, once,
filling a gap in the live stream from the history in Postgres. What a live event says is read
back from Postgres by its event id (job_events): a record on the topic only announces it, so
a forged record (the local stack's Kafka has no authentication; elsewhere a buggy
writer) reaches no client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.sse import EventSourceResponse, format_sse_event
from mxw_shared.auth import AuthError, JwksVerifier, Principal
from mxw_shared.db import Pool
from mxw_shared.logging import get_logger
from mxw_shared.problems import Problem
from mxw_shared.user_access import UserAccess, UserDisabled
from prometheus_client import Counter, Gauge, Histogram
from starlette.websockets import WebSocketState

from mxw_notifier import repository
from mxw_notifier.domain import (
    CloseCode,
    FellBehind,
    HistoryView,
    StatusMessage,
    credentials,
    may_watch,
    parse_after,
    parse_job_id,
    parse_resume,
    place,
    select_history,
)
from mxw_notifier.fanout import Hub, Subscriber
from mxw_notifier.settings import NotifierSettings

log = get_logger(__name__)

# Live events read back from job_events, remembered by event id: every feed of the replica
# that gets the event shares one query.
CONFIRMED_CACHE_SIZE = 4096
# Open feeds re-read their user's disabled flag every user_access_cache_s, at most this often.
_ACCESS_RECHECK_MIN_S = 1.0

OPEN_CONNECTIONS = Gauge("mxw_notifier_open_connections", "Open status feeds (WebSocket + SSE)")
WS_CONNECTIONS = Gauge(
    "mxw_notifier_ws_connections", "Open status WebSockets", ["route"]
)  # route: job | jobs
SSE_CONNECTIONS = Gauge("mxw_notifier_sse_connections", "Open status SSE streams")
CLOSED_CONNECTIONS = Counter(
    "mxw_notifier_connections_closed_total", "Status feeds closed", ["reason"]
)
UNCONFIRMED_EVENTS = Counter(
    "mxw_notifier_unconfirmed_events_total",
    "Live job.status records dropped: no recorded status event (job_events) has their event "
    "id and job (forged, or published by a system that does not record its statuses)",
)
DELIVERY_LATENCY = Histogram(
    "mxw_notifier_delivery_latency_seconds",
    "From a live job.status event's time (ce_time) to its hand-over to a client's socket",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


class Feed:
    """State shared by every feed of one process."""

    def __init__(self, settings: NotifierSettings, verifier: JwksVerifier, hub: Hub) -> None:
        self.settings = settings
        self.verifier = verifier
        self.hub = hub
        self.pool: Pool | None = None
        self.access: UserAccess | None = None
        self._per_user: Tally[str] = Tally()
        self._owners: OrderedDict[uuid.UUID, str] = OrderedDict()
        self._confirmed: OrderedDict[str, asyncio.Task[StatusMessage | None]] = OrderedDict()

    def db(self) -> Pool:
        assert self.pool is not None, "feed used before start-up"
        return self.pool

    def users(self) -> UserAccess:
        assert self.access is not None, "feed used before start-up"
        return self.access

    async def authorize(self, token: str | None) -> Principal:
        """The token's principal; raises AuthError, or UserDisabled for a disabled account."""
        if not token:
            raise AuthError("a bearer token is required")
        principal = await self.verifier.verify(token)
        await self.users().check(principal.sub)
        return principal

    @property
    def access_recheck_s(self) -> float:
        return max(self.settings.user_access_cache_s, _ACCESS_RECHECK_MIN_S)

    async def until_disabled(self, sub: str) -> None:
        """Returns once the user is disabled (seen within the access cache period)."""
        while True:
            await asyncio.sleep(self.access_recheck_s)
            try:
                if await self.users().is_disabled(sub):
                    return
            except Exception as exc:  # a database outage: the feed goes on, checked later
                log.warning("user access check failed", error=repr(exc))

    async def owner_of(self, job_id: uuid.UUID) -> str | None:
        owner = self._owners.get(job_id)
        if owner is not None:
            self._owners.move_to_end(job_id)
            return owner
        owner = await repository.job_owner(self.db(), job_id)
        if owner is not None:  # a job's owner never changes; an unknown job is not cached
            self._owners[job_id] = owner
            if len(self._owners) > self.settings.owner_cache_size:
                self._owners.popitem(last=False)
        return owner

    async def confirmed(self, live: StatusMessage) -> StatusMessage | None:
        """The recorded copy of a live event (state, message, seq from job_events), or None
        when nothing of that id and job was recorded. Concurrent feeds share one read."""
        read = self._confirmed.get(live.event_id)
        if read is None:
            read = asyncio.create_task(self._read_back(live))
            self._confirmed[live.event_id] = read
            while len(self._confirmed) > CONFIRMED_CACHE_SIZE:
                self._confirmed.popitem(last=False)
        try:
            stored = await asyncio.shield(read)
        except Exception:
            self._confirmed.pop(live.event_id, None)  # a database error: read again next time
            raise
        if stored is None:
            return None
        return replace(stored, coalesced=live.coalesced)

    async def _read_back(self, live: StatusMessage) -> StatusMessage | None:
        stored = await repository.event_by_id(self.db(), live.event_id)
        if stored is None or stored.job_id != live.job_id:
            UNCONFIRMED_EVENTS.inc()
            log.warning(
                "unrecorded job.status record dropped",
                event_id=live.event_id[:100],
                job_id=str(live.job_id),
            )
            return None
        return stored

    async def watchable_job(self, principal: Principal, raw_job_id: str) -> uuid.UUID | None:
        job_id = parse_job_id(raw_job_id)
        if job_id is None:
            return None
        return job_id if may_watch(principal, await self.owner_of(job_id)) else None

    def reserve(self, principal: Principal) -> bool:
        if self._per_user[principal.sub] >= self.settings.max_connections_per_user:
            return False
        self._per_user[principal.sub] += 1
        OPEN_CONNECTIONS.inc()
        return True

    def release(self, principal: Principal) -> None:
        OPEN_CONNECTIONS.dec()
        self._per_user[principal.sub] -= 1
        if self._per_user[principal.sub] <= 0:
            del self._per_user[principal.sub]

    def subscriber(
        self, principal: Principal, job_id: uuid.UUID | None, everything: bool = False
    ) -> Subscriber:
        return Subscriber(
            principal,
            job_id=job_id,
            everything=everything,
            capacity=self.settings.connection_queue_size,
            max_behind_s=self.settings.max_behind_s,
        )

    def seconds_left(self, principal: Principal) -> float | None:
        """Until the token expires (with the verifier's leeway): the feed ends then."""
        exp = principal.claims.get("exp")
        if not isinstance(exp, int | float):
            return None
        return max(0.0, float(exp) + self.settings.auth_leeway_s - time.time())

    # ---- WebSocket ----

    async def serve_websocket(self, websocket: WebSocket, raw_job_id: str | None) -> None:
        params = websocket.query_params
        found = credentials(
            params.get("access_token") or params.get("token"),
            websocket.headers.get("authorization"),
            websocket.scope.get("subprotocols") or (),
        )
        route = "job" if raw_job_id is not None else "jobs"
        # Accept first: a close before accept reaches the client as a bare HTTP 403,
        # without the code that tells it why.
        await websocket.accept(subprotocol=found.subprotocol)
        try:
            principal = await self.authorize(found.token)
        except AuthError as exc:
            await self._close(websocket, CloseCode.UNAUTHORIZED, str(exc)[:120], "unauthorized")
            return
        except UserDisabled as exc:
            await self._close(websocket, CloseCode.FORBIDDEN, str(exc), "disabled")
            return

        job_id: uuid.UUID | None = None
        resume: dict[uuid.UUID, int] = {}
        everything = False
        try:
            if raw_job_id is not None:
                after = parse_after(params.get("after"))
            else:
                resume = parse_resume(params.get("resume"), self.settings.max_resume_jobs)
                everything = params.get("all", "").lower() in ("1", "true", "yes")
        except ValueError as exc:
            await self._close(websocket, CloseCode.BAD_REQUEST, str(exc)[:120], "bad-request")
            return
        if raw_job_id is not None:
            job_id = await self.watchable_job(principal, raw_job_id)
            if job_id is None:
                await self._close(websocket, CloseCode.NOT_FOUND, "job not found", "not-found")
                return
        elif everything and not principal.is_admin:
            await self._close(websocket, CloseCode.FORBIDDEN, "all=true is for admins", "forbidden")
            return
        elif resume and not principal.is_admin:
            owners = await repository.job_owners(self.db(), list(resume))
            foreign = [j for j in resume if owners.get(j) != principal.sub]
            if foreign:
                await self._close(
                    websocket, CloseCode.NOT_FOUND, f"job not found: {foreign[0]}", "not-found"
                )
                return
        if not self.reserve(principal):
            await self._close(websocket, CloseCode.TOO_MANY, "too many connections", "too-many")
            return

        WS_CONNECTIONS.labels(route).inc()
        # Subscribe before reading history: an event committed after the read arrives live,
        # one committed before it is in the history, and seq removes the overlap.
        subscriber = self.subscriber(principal, job_id, everything)
        self.hub.add(subscriber)
        session = Session(self, subscriber)
        if job_id is not None:
            starts: dict[uuid.UUID, int] = {job_id: after}
        else:
            starts = resume
        try:
            reason = await self._stream(websocket, subscriber, session, starts)
        finally:
            self.hub.remove(subscriber)
            WS_CONNECTIONS.labels(route).dec()
            self.release(principal)
        CLOSED_CONNECTIONS.labels(reason).inc()

    async def _stream(
        self,
        websocket: WebSocket,
        subscriber: Subscriber,
        session: Session,
        starts: dict[uuid.UUID, int],
    ) -> str:
        async def send(messages: list[StatusMessage]) -> None:
            for message in messages:
                await websocket.send_text(message.to_json())

        async def feed() -> None:
            for job_id, after in starts.items():
                await send(await session.start_job(job_id, after))
            while not session.finished:
                for live in await subscriber.next_batch():
                    await send(await session.deliver(live))
                    if session.finished:
                        break

        sender = asyncio.create_task(feed())
        receiver = asyncio.create_task(_until_disconnect(websocket))
        dropped = asyncio.create_task(subscriber.dropped.wait())
        left = self.seconds_left(subscriber.principal)
        expiry = asyncio.create_task(asyncio.sleep(left if left is not None else 10**9))
        revoked = asyncio.create_task(self.until_disabled(subscriber.principal.sub))
        tasks = (sender, receiver, dropped, expiry, revoked)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        failure = _failure(sender)
        if sender.done() and not sender.cancelled() and failure is None:
            await self._close(websocket, CloseCode.FINISHED, "job finished", None)
            return "finished"
        if subscriber.fell_behind is not None or isinstance(failure, FellBehind):
            log.info("slow client dropped", user=subscriber.principal.sub)
            await self._close(websocket, CloseCode.TOO_SLOW, "client too slow", None)
            return "slow"
        if receiver.done() and not receiver.cancelled():
            return "client-closed"
        if expiry.done() and not expiry.cancelled():
            await self._close(websocket, CloseCode.UNAUTHORIZED, "token expired", None)
            return "token-expired"
        if revoked.done() and not revoked.cancelled():
            await self._close(websocket, CloseCode.FORBIDDEN, "this account is disabled", None)
            return "disabled"
        if failure is not None and not isinstance(failure, WebSocketDisconnect | OSError):
            log.warning("status feed failed", error=repr(failure))
            await self._close(websocket, CloseCode.INTERNAL_ERROR, "internal error", None)
            return "error"
        return "client-closed"

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

    # ---- HTTP: SSE or JSON history ----

    async def http_events(self, request: Request, raw_job_id: str, after_param: str | None) -> Any:
        found = credentials(
            request.query_params.get("access_token"), request.headers.get("authorization")
        )
        try:
            principal = await self.authorize(found.token)
        except AuthError as exc:
            raise Problem(
                401, "Unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from exc
        except UserDisabled as exc:
            raise Problem(403, "Forbidden", str(exc)) from exc
        job_id = await self.watchable_job(principal, raw_job_id)
        if job_id is None:
            raise Problem(404, "Not Found", "job not found")
        # EventSource sends the id of the last event it saw when it reconnects.
        raw_after = request.headers.get("last-event-id") or after_param
        try:
            after = parse_after(raw_after)
        except ValueError as exc:
            raise Problem(400, "Bad Request", str(exc)) from exc

        if "text/event-stream" not in request.headers.get("accept", ""):
            view = await history_view(self.db(), job_id, after)
            return {
                "job_id": str(job_id),
                "finished": view.finished,
                "latest_seq": view.latest_seq,
                "events": [status.to_dict() for status in view.to_send],
            }
        if self._per_user[principal.sub] >= self.settings.max_connections_per_user:
            raise Problem(
                429, "Too Many Requests", "too many open feeds", headers={"Retry-After": "10"}
            )
        latest = await repository.latest_event(self.db(), job_id)
        if latest is not None and latest.terminal and after >= (latest.seq or 0):
            # Nothing more will come: 204 tells EventSource to stop reconnecting.
            return Response(status_code=204)
        return EventSourceResponse(
            self._sse(principal, job_id, after),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _sse(
        self, principal: Principal, job_id: uuid.UUID, after: int
    ) -> AsyncIterator[bytes]:
        yield format_sse_event(retry=self.settings.sse_retry_ms)
        if not self.reserve(principal):
            yield _sse_error(CloseCode.TOO_MANY, "too many connections")
            return
        SSE_CONNECTIONS.inc()
        subscriber = self.subscriber(principal, job_id)
        self.hub.add(subscriber)
        session = Session(self, subscriber)
        reason = "client-closed"
        try:
            for message in await session.start_job(job_id, after):
                yield _sse_status(message)
            while not session.finished:
                left = self.seconds_left(principal)
                if left is not None and left <= 0:
                    yield _sse_error(CloseCode.UNAUTHORIZED, "token expired")
                    reason = "token-expired"
                    return
                if await self.users().is_disabled(principal.sub):
                    yield _sse_error(CloseCode.FORBIDDEN, "this account is disabled")
                    reason = "disabled"
                    return
                timeout = min(
                    self.settings.sse_keepalive_s,
                    self.access_recheck_s,
                    left or self.settings.sse_keepalive_s,
                )
                try:
                    batch = await subscriber.next_batch(timeout)
                except FellBehind:
                    yield _sse_error(CloseCode.TOO_SLOW, "client too slow")
                    reason = "slow"
                    return
                if not batch:
                    yield b": ping\n\n"
                for live in batch:
                    for message in await session.deliver(live):
                        yield _sse_status(message)
                    if session.finished:
                        break
            yield format_sse_event(event="end", data_str=json.dumps({"job_id": str(job_id)}))
            reason = "finished"
        finally:
            self.hub.remove(subscriber)
            SSE_CONNECTIONS.dec()
            self.release(principal)
            CLOSED_CONNECTIONS.labels(reason).inc()


class Session:
    """What one feed has sent: per job the last seq, so each job's events go out in order,
    once, with gaps in the live stream filled from the history."""

    def __init__(self, feed: Feed, subscriber: Subscriber) -> None:
        self.feed = feed
        self.subscriber = subscriber
        self.last_sent: dict[uuid.UUID, int] = {}
        self.finished = False  # a single-job feed sent its job's terminal event
        self._allowed: set[uuid.UUID] = set()

    async def start_job(self, job_id: uuid.UUID, after: int) -> list[StatusMessage]:
        """The job's history after `after`; from here on its live events follow."""
        view = await history_view(self.feed.db(), job_id, after)
        self._allowed.add(job_id)
        self.last_sent[job_id] = max(after, view.latest_seq)
        if self.subscriber.job_id is not None and view.finished:
            self.finished = True
        return view.to_send

    async def deliver(self, live: StatusMessage) -> list[StatusMessage]:
        """What to send for a live event: nothing (a duplicate, or not this caller's job), the
        event, or the missed history and then the event."""
        if not await self._may_see(live.job_id):
            return []
        age = (datetime.now(UTC) - live.time).total_seconds()
        stored = await self.feed.confirmed(live)
        if stored is None:
            return []
        live = stored
        placement = place(live, self.last_sent.get(live.job_id))
        out: list[StatusMessage] = []
        if placement.fill_after is not None:
            out += await repository.job_history(
                self.feed.db(), live.job_id, placement.fill_after, placement.fill_before
            )
        if placement.send:
            out.append(live)
            DELIVERY_LATENCY.observe(max(age, 0.0))
        if out:
            self.last_sent[live.job_id] = max(m.seq or 0 for m in out)
            if self.subscriber.job_id is not None and out[-1].terminal:
                self.finished = True
        return out

    async def _may_see(self, job_id: uuid.UUID) -> bool:
        subscriber = self.subscriber
        if subscriber.job_id is not None:
            return job_id == subscriber.job_id
        if subscriber.everything or job_id in self._allowed:
            return True
        if await self.feed.owner_of(job_id) != subscriber.principal.sub:
            return False
        self._allowed.add(job_id)
        return True


async def history_view(pool: Pool, job_id: uuid.UUID, after: int) -> HistoryView:
    """The history after `after`, plus whether the job's latest event is terminal."""
    entries = await repository.job_history(pool, job_id, after)
    if not entries:
        latest = await repository.latest_event(pool, job_id)
        entries = [] if latest is None else [latest]
    return select_history(entries, after)


def _failure(task: asyncio.Task[None]) -> BaseException | None:
    if not task.done() or task.cancelled():
        return None
    return task.exception()


def _sse_status(message: StatusMessage) -> bytes:
    return format_sse_event(data_str=message.to_json(), id=str(message.seq or ""))


def _sse_error(code: CloseCode, reason: str) -> bytes:
    return format_sse_event(event="error", data_str=json.dumps({"code": code, "reason": reason}))


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

    @router.websocket("/ws/jobs")
    async def jobs_status_socket(websocket: WebSocket) -> None:
        await feed.serve_websocket(websocket, None)

    @router.get(
        "/jobs/{job_id}/events",
        responses={
            200: {
                "description": "Server-Sent Events when the client accepts text/event-stream "
                "(id = seq; Last-Event-ID resumes), else the history as JSON",
                "content": {"text/event-stream": {}, "application/json": {}},
            },
            204: {"description": "the job is finished and the client has every event"},
        },
    )
    async def job_events(
        request: Request,
        job_id: str,
        after: str | None = Query(
            default=None, max_length=12, description="the last seq the client has"
        ),
        access_token: str | None = Query(
            default=None,
            description="the bearer token, for EventSource (which cannot set headers)",
        ),
    ) -> Any:
        del access_token  # read by http_events with the other transports
        return await feed.http_events(request, job_id, after)

    return router
