"""The notifier's side of webhook secrets at rest: no start without a usable key, and a
delivery whose secret no configured key opens fails with the reason."""

import uuid
from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from mxw_notifier.main import create_app
from mxw_notifier.settings import NotifierSettings
from mxw_notifier.webhooks import Claimed, WebhookDispatcher
from mxw_shared.webhook_secrets import WebhookSecretBox, WebhookSecretKeyError
from pydantic import SecretStr


def test_info_webhook_secret_notifier_does_not_start_without_a_usable_key(infra) -> None:
    for key, reason in ((None, "is not set"), ("not-a-key", "is not a webhook secret key")):
        settings = infra.settings(NotifierSettings, "notifier", webhook_secret_key=key)
        with pytest.raises(WebhookSecretKeyError, match=reason):
            create_app(settings)


async def test_info_webhook_secret_wrong_key_fails_the_delivery_with_its_reason(infra, db):
    settings = infra.settings(NotifierSettings, "notifier")
    sealed = WebhookSecretBox(SecretStr(Fernet.generate_key().decode()), []).seal("whsec_eA==")
    wrong = WebhookSecretBox(SecretStr(Fernet.generate_key().decode()), [])
    dispatcher = WebhookDispatcher(db, settings, wrong)
    claimed = Claimed(
        id=1, endpoint_id=uuid.uuid4(), msg_id="msg_x", event_type="job.done", payload={},
        attempt=1, url="https://example.com/hook", stored_secrets=[sealed],
        enabled_at=datetime.now(UTC),
    )  # fmt: skip
    try:
        result = await dispatcher.post(claimed)
    finally:
        await dispatcher.client.aclose()
    assert result.outcome == "failed"
    assert result.error is not None
    assert "cannot be decrypted with MXW_WEBHOOK_SECRET_KEY" in result.error
