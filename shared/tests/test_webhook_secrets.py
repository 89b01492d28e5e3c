"""Webhook secrets at rest (real Postgres): sealed under MXW_WEBHOOK_SECRET_KEY, legacy
plaintext rows and rows of an old key re-sealed, clear errors for a missing or wrong key."""

import uuid

import pytest
from cryptography.fernet import Fernet
from mxw_shared.webhook_secrets import (
    WebhookSecretBox,
    WebhookSecretKeyError,
    WebhookSecretSettings,
    seal_stored_secrets,
)
from pydantic import SecretStr


def box(key: str, *old: str) -> WebhookSecretBox:
    return WebhookSecretBox(SecretStr(key), [SecretStr(k) for k in old])


def test_info_webhook_secret_sealing_is_authenticated_encryption() -> None:
    key = Fernet.generate_key().decode()
    sealed = box(key).seal("whsec_c2VjcmV0")
    assert "c2VjcmV0" not in sealed
    assert box(key).open(sealed) == "whsec_c2VjcmV0"
    assert box(key).seal("whsec_c2VjcmV0") != sealed  # random IV: equal secrets look different
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(WebhookSecretKeyError, match="cannot be decrypted"):
        box(key).open(tampered)


def test_info_webhook_secret_missing_or_malformed_key_is_a_clear_error() -> None:
    with pytest.raises(WebhookSecretKeyError, match="MXW_WEBHOOK_SECRET_KEY is not set"):
        WebhookSecretBox.from_settings(WebhookSecretSettings(webhook_secret_key=None))
    with pytest.raises(WebhookSecretKeyError, match="is not a webhook secret key"):
        WebhookSecretBox.from_settings(WebhookSecretSettings(webhook_secret_key="short"))
    with pytest.raises(WebhookSecretKeyError, match="cannot be decrypted"):
        box(Fernet.generate_key().decode()).open(box(Fernet.generate_key().decode()).seal("x"))


async def test_info_webhook_secret_plaintext_and_old_key_rows_are_resealed(db) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    legacy, under_old = uuid.uuid4(), uuid.uuid4()
    rows = {legacy: ("whsec_bGVnYWN5", None), under_old: (box(old).seal("whsec_b2xk"), None)}
    for endpoint_id, (secret, previous) in rows.items():
        await db.execute(
            "INSERT INTO webhook_endpoints (id, owner_id, url, event_types, secret,"
            " previous_secret) VALUES ($1, 'sealing', 'https://example.com/', '{job.done}',"
            " $2, $3)",
            endpoint_id,
            secret,
            previous,
        )
    try:
        current = box(new, old)
        assert await seal_stored_secrets(db, current) >= 2
        stored = dict(
            await db.fetch(
                "SELECT id, secret FROM webhook_endpoints WHERE id = ANY($1::uuid[])",
                [legacy, under_old],
            )
        )
        assert "bGVnYWN5" not in stored[legacy]
        assert box(new).open(stored[legacy]) == "whsec_bGVnYWN5"  # the new key alone opens
        assert box(new).open(stored[under_old]) == "whsec_b2xk"
        assert await seal_stored_secrets(db, current) == 0  # nothing left to do
        with pytest.raises(WebhookSecretKeyError):  # a wrong key: a clear error, nothing lost
            await seal_stored_secrets(db, box(Fernet.generate_key().decode()))
    finally:
        await db.execute(
            "DELETE FROM webhook_endpoints WHERE id = ANY($1::uuid[])", [legacy, under_old]
        )
