"""/webhooks: register, list, change, delete endpoints; rotate a secret; ask for a test
delivery; list delivery attempts. The notifier makes the deliveries (docs/notifier.md)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from mxw_shared.db import BIGINT_MAX
from mxw_shared.problems import PROBLEM_JSON

from mxw_gateway.deps import CurrentUserDep, PoolDep, SettingsDep
from mxw_gateway.hygiene import RateLimitWebhookTests
from mxw_gateway.webhooks import service
from mxw_gateway.webhooks.schemas import (
    AttemptPage,
    RotatedSecret,
    TestDelivery,
    Webhook,
    WebhookCreate,
    WebhookList,
    WebhookUpdate,
    WebhookWithSecret,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such endpoint (or not yours).", "content": {PROBLEM_JSON: {}}}
}
_TARGET: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "Invalid body, or a URL the notifier may not call (not http(s), "
        "credentials, unresolvable, or a private/loopback/link-local address).",
        "content": {PROBLEM_JSON: {}},
    }
}


@router.post(
    "",
    status_code=201,
    response_model=WebhookWithSecret,
    responses={
        **_TARGET,
        409: {"description": "Endpoint limit reached.", "content": {PROBLEM_JSON: {}}},
    },
    summary="Register an endpoint; the answer carries its signing secret (only now)",
)
async def create_webhook(
    body: WebhookCreate,
    response: Response,
    user: CurrentUserDep,
    pool: PoolDep,
    settings: SettingsDep,
) -> WebhookWithSecret:
    created = await service.create(pool, settings, user, body)
    response.headers["Location"] = f"/webhooks/{created.id}"
    return created


@router.get("", response_model=WebhookList, summary="Your endpoints (admins: all=true)")
async def list_webhooks(
    user: CurrentUserDep,
    pool: PoolDep,
    all: Annotated[bool, Query(description="Every user's endpoints (admins).")] = False,
) -> WebhookList:
    return await service.list_all(pool, user, all)


@router.get("/{webhook_id}", response_model=Webhook, responses=_NOT_FOUND)
async def get_webhook(webhook_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep) -> Webhook:
    return await service.get(pool, user, webhook_id)


@router.patch(
    "/{webhook_id}",
    response_model=Webhook,
    responses={**_NOT_FOUND, **_TARGET},
    summary="Change the URL, description or events; enable or disable",
)
async def update_webhook(
    webhook_id: uuid.UUID,
    body: WebhookUpdate,
    user: CurrentUserDep,
    pool: PoolDep,
    settings: SettingsDep,
) -> Webhook:
    return await service.update(pool, settings, user, webhook_id, body)


@router.delete("/{webhook_id}", status_code=204, responses=_NOT_FOUND)
async def delete_webhook(webhook_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep) -> Response:
    await service.delete(pool, user, webhook_id)
    return Response(status_code=204)


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=RotatedSecret,
    responses=_NOT_FOUND,
    summary="A new signing secret; the old one also signs until previous_secret_valid_until",
)
async def rotate_webhook_secret(
    webhook_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep, settings: SettingsDep
) -> RotatedSecret:
    return await service.rotate_secret(pool, settings, user, webhook_id)


@router.post(
    "/{webhook_id}/test",
    status_code=202,
    response_model=TestDelivery,
    responses={
        **_NOT_FOUND,
        429: {"description": "Webhook test rate limit reached.", "content": {PROBLEM_JSON: {}}},
    },
    dependencies=[RateLimitWebhookTests],
    summary="Send a signed webhook.test event; its attempts appear under /attempts",
)
async def test_webhook(webhook_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep) -> TestDelivery:
    return await service.request_test(pool, user, webhook_id)


@router.get(
    "/{webhook_id}/attempts",
    response_model=AttemptPage,
    responses=_NOT_FOUND,
    summary="Delivery attempts, newest first",
)
async def list_webhook_attempts(
    webhook_id: uuid.UUID,
    user: CurrentUserDep,
    pool: PoolDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=BIGINT_MAX, description="Attempts older than this id.")
    ] = None,
) -> AttemptPage:
    return await service.attempts(pool, user, webhook_id, limit, before)
