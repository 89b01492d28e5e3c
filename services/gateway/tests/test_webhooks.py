"""Webhook endpoints at the gateway: registration with target checks, ownership, changes,
secret rotation, test requests and the attempts listing (attempt rows written the way the
notifier writes them; the deliveries themselves are in test_webhooks_delivery.py)."""

from __future__ import annotations

import uuid

import pytest
from mxw_shared.webhook_secrets import (
    WebhookSecretBox,
    WebhookSecretKeyError,
    WebhookSecretSettings,
)


@pytest.fixture(scope="module")
async def client(start_gateway):
    # Default webhook settings: private and loopback targets are refused.
    async with start_gateway() as c:
        yield c


async def create(client, headers, url="https://93.184.216.34/hooks", **body):
    return await client.post("/webhooks", headers=headers, json={"url": url, **body})


async def test_register_list_get_change_delete(client, token):
    alice = token("wh-alice")
    created = await create(client, alice, description="ci", event_types=["job.done"] * 2)
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == f"/webhooks/{body['id']}"
    assert body["secret"].startswith("whsec_")
    assert len(body["secret"]) > 40
    assert body["event_types"] == ["job.done"]  # duplicates folded
    assert (body["enabled"], body["active"], body["consecutive_failures"]) == (True, True, 0)
    webhook = f"/webhooks/{body['id']}"

    listed = (await client.get("/webhooks", headers=alice)).json()["items"]
    assert [w["id"] for w in listed] == [body["id"]]
    fetched = (await client.get(webhook, headers=alice)).json()
    assert "secret" not in fetched  # shown only when created or rotated
    assert fetched["url"] == "https://93.184.216.34/hooks"

    changed = await client.patch(
        webhook,
        headers=alice,
        json={"enabled": False, "event_types": ["job.failed", "job.cancelled"]},
    )
    assert changed.status_code == 200
    assert (changed.json()["enabled"], changed.json()["active"]) == (False, False)
    assert changed.json()["event_types"] == ["job.failed", "job.cancelled"]
    assert (await client.patch(webhook, headers=alice, json={"secret": "x"})).status_code == 422

    assert (await client.delete(webhook, headers=alice)).status_code == 204
    assert (await client.get(webhook, headers=alice)).status_code == 404


async def test_other_users_see_nothing_and_admins_see_all(client, token):
    owner, other = token("wh-owner"), token("wh-other")
    admin = token("wh-admin", admin=True)
    webhook_id = (await create(client, owner)).json()["id"]
    path = f"/webhooks/{webhook_id}"
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""),
                           ("POST", "/rotate-secret"), ("POST", "/test"),
                           ("GET", "/attempts")):  # fmt: skip
        response = await client.request(
            method, path + suffix, headers=other, json={} if method == "PATCH" else None
        )
        assert response.status_code == 404, (method, suffix, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert (await client.get("/webhooks", headers=other)).json()["items"] == []
    assert (await client.get("/webhooks?all=true", headers=other)).status_code == 403
    everyone = (await client.get("/webhooks?all=true", headers=admin)).json()["items"]
    assert webhook_id in {w["id"] for w in everyone}
    assert (await client.get(path, headers=admin)).status_code == 200
    assert (await client.get("/webhooks")).status_code == 401


@pytest.mark.parametrize(
    ("url", "why"),
    [
        # Worded for a webhook (URL ingest says "fetched": test_from_url.py).
        ("ftp://example.com/x", "only http and https URLs can be called"),
        ("https://user:pw@93.184.216.34/x", "credentials"),
        ("http://127.0.0.1:9/x", "not a public address"),
        ("http://localhost/x", "not a public address"),
        ("http://169.254.169.254/latest/meta-data", "not a public address"),
        ("http://10.0.0.7/x", "not a public address"),
        ("http://[::1]/x", "not a public address"),
        ("http://no-such-host.invalid/x", "cannot resolve"),
        ("not a url", "only http and https URLs can be called"),
    ],
)
async def test_targets_the_notifier_may_not_call_are_refused(client, token, url, why):
    response = await create(client, token("wh-ssrf"), url=url)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert why in response.json()["detail"]
    # Changing a good endpoint's URL is checked the same way.
    good = (await create(client, token("wh-ssrf"))).json()["id"]
    changed = await client.patch(f"/webhooks/{good}", headers=token("wh-ssrf"), json={"url": url})
    assert changed.status_code == 422
    await client.delete(f"/webhooks/{good}", headers=token("wh-ssrf"))


async def test_rotation_keeps_the_previous_secret_for_a_grace_period(client, token, db):
    headers = token("wh-rotate")
    created = (await create(client, headers)).json()
    rotated = await client.post(f"/webhooks/{created['id']}/rotate-secret", headers=headers)
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["secret"].startswith("whsec_")
    assert new["secret"] != created["secret"]
    row = await db.fetchrow(
        "SELECT secret, previous_secret, previous_secret_until > now() + interval '23 hours' "
        "AS in_grace FROM webhook_endpoints WHERE id = $1",
        uuid.UUID(created["id"]),
    )
    # Stored sealed (shared/webhook_secrets.py): the key of the session opens them.
    opened = WebhookSecretBox.from_settings(WebhookSecretSettings())
    assert (opened.open(row["secret"]), opened.open(row["previous_secret"]), row["in_grace"]) == (
        new["secret"], created["secret"], True,
    )  # fmt: skip
    view = (await client.get(f"/webhooks/{created['id']}", headers=headers)).json()
    assert view["previous_secret_valid_until"] is not None


@pytest.mark.parametrize(
    ("key", "reason"), [(None, "is not set"), ("not-a-key", "is not a webhook secret key")]
)
async def test_the_gateway_does_not_start_without_a_usable_secret_key(start_gateway, key, reason):
    # A GatewaySettings field like any other: passed in, no environment patched.
    with pytest.raises(WebhookSecretKeyError, match=reason):
        async with start_gateway(webhook_secret_key=key):
            pass


async def test_test_request_and_attempts_listing(client, token, db):
    headers = token("wh-attempts")
    webhook_id = uuid.UUID((await create(client, headers)).json()["id"])
    test = await client.post(f"/webhooks/{webhook_id}/test", headers=headers)
    assert test.status_code == 202
    assert test.json()["message_id"].startswith("msg_test_")
    stored = await db.fetchval(
        "SELECT test_message_id FROM webhook_endpoints WHERE id = $1", webhook_id
    )
    assert stored == test.json()["message_id"]

    # Attempts as the notifier records them: three, paged newest first.
    delivery = await db.fetchval(
        "INSERT INTO webhook_deliveries (endpoint_id, owner_id, msg_id, event_type, payload,"
        " state, attempts) VALUES ($1, 'wh-attempts', 'msg_1', 'job.done', '{}', 'delivered', 3)"
        " RETURNING id",
        webhook_id,
    )
    for attempt, (status, outcome) in enumerate(
        ((500, "failed"), (None, "failed"), (200, "delivered")), start=1
    ):
        await db.execute(
            "INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempt, duration_ms,"
            " status_code, outcome, error) VALUES ($1, $2, $3, 12.5, $4, $5, $6)",
            delivery, webhook_id, attempt, status, outcome,
            None if outcome == "delivered" else "boom",
        )  # fmt: skip
    first = (await client.get(f"/webhooks/{webhook_id}/attempts?limit=2", headers=headers)).json()
    assert [a["attempt"] for a in first["items"]] == [3, 2]
    assert first["items"][0]["outcome"] == "delivered"
    assert first["items"][0]["message_id"] == "msg_1"
    assert first["items"][0]["delivery_state"] == "delivered"
    rest = (
        await client.get(
            f"/webhooks/{webhook_id}/attempts",
            headers=headers,
            params={"before": first["next_before"]},
        )
    ).json()
    assert ([a["attempt"] for a in rest["items"]], rest["next_before"]) == ([1], None)
    assert rest["items"][0]["status_code"] == 500


async def test_endpoint_limit_per_user(client, token, db):
    headers = token("wh-many")
    await db.execute(
        "INSERT INTO webhook_endpoints (id, owner_id, url, event_types, secret)"
        " SELECT gen_random_uuid(), 'wh-many', 'https://93.184.216.34/', '{job.done}', 'whsec_x'"
        " FROM generate_series(1, 20)"
    )
    refused = await create(client, headers)
    assert refused.status_code == 409
    assert "at most 20" in refused.json()["detail"]
