"""Webhook delivery: terminal job events become one delivery per matching endpoint, and every
replica's dispatcher claims due deliveries (SKIP LOCKED + a lease), posts them signed per
Standard Webhooks, records each attempt, retries with exponential backoff, and disables an
endpoint that keeps failing. The tables are written only here; endpoints come from the
gateway."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from mxw_shared.db import Pool
from mxw_shared.logging import get_logger
from mxw_shared.netguard import (
    BadUrl,
    parse_networks,
    parse_target,
    pinned_request,
    refusal,
    resolve,
)
from mxw_shared.webhook_secrets import WebhookSecretBox, WebhookSecretKeyError
from prometheus_client import Counter

from mxw_notifier.repository import status_message
from mxw_notifier.settings import NotifierSettings
from mxw_notifier.webhook_domain import (
    TEST_EVENT_TYPE,
    USER_AGENT,
    backoff_s,
    body_of,
    event_type,
    job_event_payload,
    should_disable,
    signature_header,
)

log = get_logger(__name__)

ATTEMPTS = Counter(
    "mxw_webhook_attempts_total", "Webhook delivery attempts", ["outcome"]
)  # delivered | failed | refused
DELIVERIES = Counter(
    "mxw_webhook_deliveries_total", "Webhook deliveries finished", ["outcome"]
)  # delivered | failed
DISABLED = Counter("mxw_webhook_endpoints_disabled_total", "Endpoints disabled after failures")

_ACTIVE = "e.enabled AND NOT coalesce(h.disabled_at >= e.enabled_at, false)"


@dataclass(frozen=True)
class Claimed:
    id: int
    endpoint_id: uuid.UUID
    msg_id: str
    event_type: str
    payload: dict[str, Any]
    attempt: int
    url: str
    # As stored: sealed (shared/webhook_secrets.py), opened only to sign.
    stored_secrets: list[str]
    enabled_at: datetime


@dataclass(frozen=True)
class AttemptResult:
    outcome: str  # delivered | failed | refused
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None


class WebhookDispatcher:
    def __init__(
        self,
        pool: Pool,
        settings: NotifierSettings,
        secret_box: WebhookSecretBox,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.secret_box = secret_box
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.webhook_timeout_s),
            follow_redirects=False,
            trust_env=False,
        )
        self.networks = parse_networks(settings.webhook_allowed_networks)
        self._wake = asyncio.Event()
        self._stopping = False
        self._in_flight: set[asyncio.Task[None]] = set()

    # ---- creating deliveries ----

    async def on_status(self, event_id: str) -> int:
        """Deliveries for the job.status event `event_id` when it ends a job; returns how many
        were created (0 again for a redelivered event). The event is read back from the
        history: a record on the topic alone is not trusted to name the job's owner."""
        row = await self.pool.fetchrow(
            "SELECT e.job_id, e.seq, e.event_id, e.stage, e.state, e.progress, e.message, "
            "e.error, e.created_at, j.owner_id, j.filename "
            "FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE e.event_id = $1",
            event_id,
        )
        if row is None:
            return 0
        kind = event_type(row["state"])
        if kind is None:
            return 0
        status = status_message(row)
        payload = job_event_payload(kind, status, row["filename"])
        result: str = await self.pool.execute(
            "INSERT INTO webhook_deliveries "
            "  (endpoint_id, owner_id, msg_id, event_type, job_id, payload) "
            "SELECT e.id, e.owner_id, $1, $2, $3, $4::jsonb "
            "FROM webhook_endpoints e "
            "LEFT JOIN webhook_endpoint_health h ON h.endpoint_id = e.id "
            f"WHERE e.owner_id = $5 AND $2 = ANY(e.event_types) AND {_ACTIVE} "
            "ON CONFLICT (endpoint_id, msg_id) DO NOTHING",
            f"msg_{event_id}",
            kind,
            status.job_id,
            payload,
            row["owner_id"],
        )
        created = int(result.rsplit(" ", 1)[-1])
        if created:
            self._wake.set()
        return created

    async def _enqueue_tests(self) -> None:
        """Test deliveries the gateway asked for (webhook_endpoints.test_message_id)."""
        await self.pool.execute(
            "INSERT INTO webhook_deliveries (endpoint_id, owner_id, msg_id, event_type, payload) "
            "SELECT e.id, e.owner_id, e.test_message_id, $1, jsonb_build_object("
            "  'type', $1::text, 'timestamp', e.test_requested_at,"
            "  'data', jsonb_build_object('endpoint_id', e.id,"
            "    'message', 'A test delivery from MxWhisper'))"
            "FROM webhook_endpoints e "
            "WHERE e.test_message_id IS NOT NULL "
            "  AND e.test_requested_at > now() - interval '1 hour' "
            "ON CONFLICT (endpoint_id, msg_id) DO NOTHING",
            TEST_EVENT_TYPE,
        )

    async def _fail_disabled(self) -> None:
        """Pending job deliveries of an endpoint switched off (by its user or after sustained
        failure) end here; re-enabling delivers what happens from then on."""
        await self.pool.execute(
            "UPDATE webhook_deliveries d SET state = 'failed', finished_at = now(), "
            "  lease_expires_at = NULL, last_error = 'endpoint disabled' "
            "FROM webhook_endpoints e "
            "LEFT JOIN webhook_endpoint_health h ON h.endpoint_id = e.id "
            "WHERE d.endpoint_id = e.id AND d.state = 'pending' AND d.event_type <> $1 "
            f"  AND NOT ({_ACTIVE})",
            TEST_EVENT_TYPE,
        )

    # ---- the dispatch loop ----

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self._enqueue_tests()
                await self._fail_disabled()
                free = self.settings.webhook_concurrency - len(self._in_flight)
                for claimed in await self._claim(free) if free > 0 else []:
                    task = asyncio.create_task(self._attempt(claimed))
                    self._in_flight.add(task)
                    task.add_done_callback(self._done)
            except Exception as exc:  # keep dispatching through database outages
                log.warning("webhook dispatch round failed", error=repr(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.webhook_poll_interval_s)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()  # a free slot: claim more now

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        # An attempt cut short keeps its lease; another replica retries after it expires.
        for task in list(self._in_flight):
            task.cancel()
        for task in list(self._in_flight):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.client.aclose()

    async def _claim(self, limit: int) -> list[Claimed]:
        rows = await self.pool.fetch(
            "WITH due AS ("
            "  SELECT d.id FROM webhook_deliveries d"
            "  JOIN webhook_endpoints e ON e.id = d.endpoint_id"
            "  LEFT JOIN webhook_endpoint_health h ON h.endpoint_id = e.id"
            "  WHERE d.state = 'pending' AND d.next_attempt_at <= now()"
            "    AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now())"
            f"   AND (d.event_type = $3 OR {_ACTIVE})"
            "  ORDER BY d.next_attempt_at LIMIT $1"
            "  FOR UPDATE OF d SKIP LOCKED) "
            "UPDATE webhook_deliveries d SET attempts = d.attempts + 1,"
            "  lease_expires_at = now() + make_interval(secs => $2) "
            "FROM due, webhook_endpoints e "
            "WHERE d.id = due.id AND e.id = d.endpoint_id "
            "RETURNING d.id, d.endpoint_id, d.msg_id, d.event_type, d.payload, d.attempts,"
            "  e.url, e.secret, e.enabled_at,"
            "  CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END AS previous",
            limit,
            self.settings.webhook_lease_s,
            TEST_EVENT_TYPE,
        )
        return [
            Claimed(
                id=row["id"],
                endpoint_id=row["endpoint_id"],
                msg_id=row["msg_id"],
                event_type=row["event_type"],
                payload=row["payload"],
                attempt=row["attempts"],
                url=row["url"],
                stored_secrets=[s for s in (row["secret"], row["previous"]) if s],
                enabled_at=row["enabled_at"],
            )
            for row in rows
        ]

    async def _attempt(self, claimed: Claimed) -> None:
        started = time.monotonic()
        try:
            result = await self.post(claimed)
        except Exception as exc:  # a bug must not lose the delivery: it counts as a failure
            log.warning("webhook attempt crashed", error=repr(exc))
            result = AttemptResult("failed", error=f"internal error: {type(exc).__name__}")
        duration_ms = (time.monotonic() - started) * 1000
        ATTEMPTS.labels(result.outcome).inc()
        try:
            await self._record(claimed, result, duration_ms)
        except Exception as exc:  # the lease runs out and the attempt is made again
            log.warning("webhook attempt not recorded", error=repr(exc))

    async def _record(self, claimed: Claimed, result: AttemptResult, duration_ms: float) -> None:
        settings = self.settings
        delivered = result.outcome == "delivered"
        final = delivered or claimed.attempt >= settings.webhook_max_attempts
        delay = backoff_s(
            claimed.attempt,
            settings.webhook_backoff_base_s,
            settings.webhook_backoff_max_s,
            random.uniform(-1, 1),  # noqa: S311 (jitter, not a secret)
        )
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempt, duration_ms,"
                "  status_code, outcome, error, response_excerpt) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                claimed.id,
                claimed.endpoint_id,
                claimed.attempt,
                duration_ms,
                result.status_code,
                result.outcome,
                result.error,
                result.excerpt,
            )
            await conn.execute(
                "UPDATE webhook_deliveries SET lease_expires_at = NULL, last_error = $2,"
                "  state = CASE WHEN $3 THEN 'delivered' WHEN $4 THEN 'failed' ELSE 'pending' END,"
                "  finished_at = CASE WHEN $4 THEN now() END,"
                "  next_attempt_at = now() + make_interval(secs => $5) "
                "WHERE id = $1",
                claimed.id,
                None if delivered else result.error,
                delivered,
                final,
                delay,
            )
            if claimed.event_type == TEST_EVENT_TYPE:
                pass  # a test says nothing about the endpoint's health
            elif delivered:
                await conn.execute(
                    "INSERT INTO webhook_endpoint_health AS h (endpoint_id, last_success_at) "
                    "VALUES ($1, now()) ON CONFLICT (endpoint_id) DO UPDATE SET "
                    "  consecutive_failures = 0, failing_since = NULL, last_success_at = now()",
                    claimed.endpoint_id,
                )
            else:
                await self._count_failure(conn, claimed, result)
        if final:
            DELIVERIES.labels("delivered" if delivered else "failed").inc()

    async def _count_failure(self, conn: Any, claimed: Claimed, result: AttemptResult) -> None:
        # Failures before the endpoint's latest (re-)enabling do not count.
        row = await conn.fetchrow(
            "INSERT INTO webhook_endpoint_health AS h"
            "  (endpoint_id, consecutive_failures, failing_since, last_failure_at) "
            "VALUES ($1, 1, now(), now()) ON CONFLICT (endpoint_id) DO UPDATE SET"
            "  consecutive_failures = CASE WHEN h.failing_since IS NULL OR h.failing_since < $2"
            "    THEN 1 ELSE h.consecutive_failures + 1 END,"
            "  failing_since = CASE WHEN h.failing_since IS NULL OR h.failing_since < $2"
            "    THEN now() ELSE h.failing_since END,"
            "  last_failure_at = now() "
            "RETURNING consecutive_failures, extract(epoch FROM now() - failing_since) AS for_s,"
            "  coalesce(disabled_at >= $2, false) AS disabled",
            claimed.endpoint_id,
            claimed.enabled_at,
        )
        if row["disabled"] or not should_disable(
            row["consecutive_failures"],
            float(row["for_s"]),
            self.settings.webhook_disable_after_failures,
            self.settings.webhook_disable_after_s,
        ):
            return
        reason = (
            f"disabled after {row['consecutive_failures']} failed attempts in a row "
            f"over {float(row['for_s']):.0f} s; last: {result.error or 'failed'}"
        )[:1000]
        await conn.execute(
            "UPDATE webhook_endpoint_health SET disabled_at = now(), disabled_reason = $2 "
            "WHERE endpoint_id = $1",
            claimed.endpoint_id,
            reason,
        )
        DISABLED.inc()
        log.info("webhook endpoint disabled", endpoint_id=str(claimed.endpoint_id))

    # ---- one HTTP attempt ----

    async def post(self, claimed: Claimed) -> AttemptResult:
        try:
            secrets = [self.secret_box.open(stored) for stored in claimed.stored_secrets]
        except WebhookSecretKeyError as exc:
            log.error("webhook secret unreadable", endpoint_id=str(claimed.endpoint_id))
            return AttemptResult("failed", error=str(exc))
        try:
            # The gateway bounded the URL's length when it was registered.
            target = parse_target(claimed.url, len(claimed.url), purpose="webhook")
        except BadUrl as exc:
            return AttemptResult("refused", error=str(exc))
        try:
            addresses = await resolve(target.host, target.port)
        except OSError:
            return AttemptResult("failed", error=f"cannot resolve {target.host}")
        refused = refusal(
            target.host, addresses, self.settings.webhook_allow_private, self.networks
        )
        if refused is not None:
            return AttemptResult("refused", error=refused)
        body = body_of(claimed.payload)
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": claimed.msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature_header(secrets, claimed.msg_id, now, body),
        }
        try:
            request = pinned_request(
                self.client, "POST", target, addresses[0], headers, body.encode()
            )
        except BadUrl as exc:
            return AttemptResult("refused", error=str(exc))
        limit = self.settings.webhook_response_excerpt_chars
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                response = await self.client.send(request, stream=True)
                try:
                    excerpt = await _read_excerpt(response, limit)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return AttemptResult(
                "failed", error=f"no answer within {self.settings.webhook_timeout_s:g} s"
            )
        except httpx.HTTPError as exc:
            return AttemptResult("failed", error=f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= response.status_code < 300:
            return AttemptResult("delivered", response.status_code, excerpt=excerpt)
        # Redirects are not followed: a redirect could point anywhere, past the checks.
        return AttemptResult(
            "failed",
            response.status_code,
            error=f"the endpoint answered {response.status_code}",
            excerpt=excerpt,
        )


async def _read_excerpt(response: httpx.Response, limit: int) -> str | None:
    if limit <= 0:
        return None
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= limit * 4:
            break
    return data.decode("utf-8", errors="replace")[:limit] or None
