"""Webhook endpoints: the gateway writes webhook_endpoints; the notifier writes deliveries,
attempts and endpoint health, which are only read here."""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from datetime import datetime
from typing import Any

from asyncpg import Record
from mxw_shared import netguard
from mxw_shared.db import Pool
from mxw_shared.locks import WEBHOOKS_OF_USER, text_key
from mxw_shared.netguard import (
    BadUrl,
    ForbiddenTarget,
    check_addresses,
    parse_networks,
    parse_target,
)
from mxw_shared.problems import Problem
from mxw_shared.webhook_secrets import WebhookSecretBox

from mxw_gateway.auth import CurrentUser
from mxw_gateway.settings import GatewaySettings
from mxw_gateway.webhooks.schemas import (
    Attempt,
    AttemptPage,
    RotatedSecret,
    TestDelivery,
    Webhook,
    WebhookCreate,
    WebhookList,
    WebhookUpdate,
    WebhookWithSecret,
)

_VIEW = """
SELECT e.id, e.owner_id, e.url, e.description, e.event_types, e.enabled, e.created_at,
       e.updated_at,
       CASE WHEN e.previous_secret_until > now() THEN e.previous_secret_until END
           AS previous_secret_valid_until,
       CASE WHEN h.disabled_at >= e.enabled_at THEN h.disabled_at END AS disabled_at,
       CASE WHEN h.disabled_at >= e.enabled_at THEN h.disabled_reason END AS disabled_reason,
       CASE WHEN h.failing_since >= e.enabled_at THEN h.consecutive_failures ELSE 0 END
           AS consecutive_failures,
       h.last_success_at, h.last_failure_at
FROM webhook_endpoints e LEFT JOIN webhook_endpoint_health h ON h.endpoint_id = e.id
"""


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _view(row: Record) -> Webhook:
    values = dict(row)
    values["active"] = values["enabled"] and values["disabled_at"] is None
    return Webhook(**values)


async def check_target(settings: GatewaySettings, url: str) -> str:
    """The URL, if the notifier may call it: http(s), no credentials, and every address
    its host resolves to public (or allowed by configuration). The notifier checks again
    before every attempt; this check gives the user an answer now."""
    try:
        target = parse_target(url, settings.webhook_max_url_chars, purpose="webhook")
    except BadUrl as exc:
        raise Problem(422, "Invalid webhook URL", str(exc)) from exc
    try:
        async with asyncio.timeout(settings.webhook_resolve_timeout_s):
            addresses = await netguard.resolve(target.host, target.port)
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise Problem(422, "Invalid webhook URL", f"cannot resolve {target.host}") from exc
    try:
        check_addresses(
            target.host,
            addresses,
            settings.webhook_allow_private,
            parse_networks(settings.webhook_allowed_networks),
        )
    except ForbiddenTarget as exc:
        raise Problem(422, "Forbidden webhook target", str(exc)) from exc
    return target.url


async def _owned(pool: Pool, user: CurrentUser, webhook_id: uuid.UUID) -> Webhook:
    row = await pool.fetchrow(_VIEW + " WHERE e.id = $1", webhook_id)
    if row is None or not (user.is_admin or row["owner_id"] == user.sub):
        raise Problem(404, "Not Found", "no webhook endpoint with this id")
    return _view(row)


async def create(
    pool: Pool, settings: GatewaySettings, user: CurrentUser, body: WebhookCreate
) -> WebhookWithSecret:
    url = await check_target(settings, body.url)
    secret = new_secret()
    sealed = WebhookSecretBox.from_settings(settings).seal(secret)  # never stored in clear
    webhook_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        # One user's creations are serialised, so the limit holds under concurrency.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            text_key(WEBHOOKS_OF_USER, user.sub),
        )
        count = await conn.fetchval(
            "SELECT count(*) FROM webhook_endpoints WHERE owner_id = $1", user.sub
        )
        if count >= settings.webhook_max_endpoints_per_user:
            raise Problem(
                409,
                "Too many webhook endpoints",
                f"at most {settings.webhook_max_endpoints_per_user} endpoints per user",
            )
        await conn.execute(
            "INSERT INTO webhook_endpoints (id, owner_id, url, description, event_types, secret) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            webhook_id,
            user.sub,
            url,
            body.description,
            list(body.event_types),
            sealed,
        )
    view = await _owned(pool, user, webhook_id)
    return WebhookWithSecret(**view.model_dump(), secret=secret)


async def list_all(pool: Pool, user: CurrentUser, everyone: bool) -> WebhookList:
    if everyone and not user.is_admin:
        raise Problem(403, "Forbidden", "all=true is for admins")
    if everyone:
        rows = await pool.fetch(_VIEW + " ORDER BY e.created_at DESC")
    else:
        rows = await pool.fetch(
            _VIEW + " WHERE e.owner_id = $1 ORDER BY e.created_at DESC", user.sub
        )
    return WebhookList(items=[_view(r) for r in rows])


async def get(pool: Pool, user: CurrentUser, webhook_id: uuid.UUID) -> Webhook:
    return await _owned(pool, user, webhook_id)


async def update(
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    webhook_id: uuid.UUID,
    body: WebhookUpdate,
) -> Webhook:
    await _owned(pool, user, webhook_id)
    changes: dict[str, Any] = {}
    if body.url is not None:
        changes["url"] = await check_target(settings, body.url)
    if "description" in body.model_fields_set:
        changes["description"] = body.description
    if body.event_types is not None:
        changes["event_types"] = list(body.event_types)
    if body.enabled is not None:
        changes["enabled"] = body.enabled
    if changes:
        columns = list(changes)
        assignments = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
        # Switching on (again) starts a clean slate: earlier failures and an automatic
        # disabling (both kept by the notifier) count only from before enabled_at.
        reenable = ", enabled_at = now()" if body.enabled else ""
        await pool.execute(
            f"UPDATE webhook_endpoints SET {assignments}, updated_at = now(){reenable} "
            "WHERE id = $1",
            webhook_id,
            *(changes[c] for c in columns),
        )
    return await _owned(pool, user, webhook_id)


async def delete(pool: Pool, user: CurrentUser, webhook_id: uuid.UUID) -> None:
    await _owned(pool, user, webhook_id)
    # Its deliveries, attempts and health go with it (ON DELETE CASCADE).
    await pool.execute("DELETE FROM webhook_endpoints WHERE id = $1", webhook_id)


async def rotate_secret(
    pool: Pool, settings: GatewaySettings, user: CurrentUser, webhook_id: uuid.UUID
) -> RotatedSecret:
    await _owned(pool, user, webhook_id)
    secret = new_secret()
    until: datetime = await pool.fetchval(
        "UPDATE webhook_endpoints SET previous_secret = secret, secret = $2,"
        "  previous_secret_until = now() + make_interval(secs => $3), updated_at = now() "
        "WHERE id = $1 RETURNING previous_secret_until",
        webhook_id,
        WebhookSecretBox.from_settings(settings).seal(secret),
        settings.webhook_secret_rotation_grace_s,
    )
    return RotatedSecret(secret=secret, previous_secret_valid_until=until)


async def request_test(pool: Pool, user: CurrentUser, webhook_id: uuid.UUID) -> TestDelivery:
    await _owned(pool, user, webhook_id)
    message_id = f"msg_test_{uuid.uuid4().hex}"
    requested_at: datetime = await pool.fetchval(
        "UPDATE webhook_endpoints SET test_message_id = $2, test_requested_at = now() "
        "WHERE id = $1 RETURNING test_requested_at",
        webhook_id,
        message_id,
    )
    return TestDelivery(message_id=message_id, requested_at=requested_at)


async def attempts(
    pool: Pool, user: CurrentUser, webhook_id: uuid.UUID, limit: int, before: int | None
) -> AttemptPage:
    await _owned(pool, user, webhook_id)
    rows = await pool.fetch(
        "SELECT a.id, a.delivery_id, d.msg_id AS message_id, d.event_type, d.job_id, a.attempt,"
        "  a.attempted_at, a.duration_ms, a.status_code, a.outcome, a.error,"
        "  a.response_excerpt, d.state AS delivery_state "
        "FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id "
        "WHERE a.endpoint_id = $1 AND ($2::bigint IS NULL OR a.id < $2) "
        "ORDER BY a.id DESC LIMIT $3",
        webhook_id,
        before,
        limit + 1,
    )
    items = [Attempt(**dict(r)) for r in rows[:limit]]
    return AttemptPage(items=items, next_before=items[-1].id if len(rows) > limit else None)
