"""Webhook signing secrets at rest: authenticated encryption (Fernet: AES-128-CBC with
HMAC-SHA256) under a key from the settings, so a database dump or backup does not hand out
the secrets that prove a delivery came from us.

The gateway seals a secret before it writes it (webhook_endpoints.secret, previous_secret);
the notifier opens it to sign a delivery. MXW_WEBHOOK_SECRET_KEY seals and opens;
MXW_WEBHOOK_SECRET_OLD_KEYS (earlier keys, a JSON list) only open. Rotation: put a new key
first and the old one in the list; the gateway re-seals every row under the new key when it
starts, after which the old key can go. Rows written before encryption (plaintext `whsec_…`)
are sealed by the same start-up pass.

A new key: `python -m mxw_shared.webhook_secrets`.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mxw_shared.db import Pool

PLAINTEXT_PREFIX = "whsec_"


class WebhookSecretKeyError(RuntimeError):
    """The key is missing or malformed, or a stored secret was sealed under another key."""


class WebhookSecretSettings(BaseSettings):
    """The key settings, read by the gateway (it seals) and the notifier (it opens)."""

    model_config = SettingsConfigDict(env_prefix="MXW_", extra="ignore")

    webhook_secret_key: SecretStr | None = None
    webhook_secret_old_keys: list[SecretStr] = Field(default_factory=list)


def new_key() -> str:
    return Fernet.generate_key().decode()


def _fernet(value: SecretStr, name: str) -> Fernet:
    try:
        return Fernet(value.get_secret_value().strip().encode())
    except (ValueError, TypeError) as exc:
        raise WebhookSecretKeyError(
            f"{name} is not a webhook secret key (32 url-safe base64-encoded bytes; make one "
            "with `python -m mxw_shared.webhook_secrets`)"
        ) from exc


class WebhookSecretBox:
    def __init__(self, key: SecretStr, old_keys: list[SecretStr]) -> None:
        self._current = _fernet(key, "MXW_WEBHOOK_SECRET_KEY")
        old = [_fernet(k, "an entry of MXW_WEBHOOK_SECRET_OLD_KEYS") for k in old_keys]
        self._all = MultiFernet([self._current, *old])

    @classmethod
    def from_settings(cls, settings: WebhookSecretSettings) -> WebhookSecretBox:
        if settings.webhook_secret_key is None:
            raise WebhookSecretKeyError(
                "MXW_WEBHOOK_SECRET_KEY is not set: webhook secrets are stored encrypted under "
                "it (make one with `python -m mxw_shared.webhook_secrets`)"
            )
        return cls(settings.webhook_secret_key, settings.webhook_secret_old_keys)

    def seal(self, secret: str) -> str:
        return self._current.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret; a legacy plaintext row as it is (until the gateway seals it)."""
        if stored.startswith(PLAINTEXT_PREFIX):
            return stored
        try:
            return self._all.decrypt(stored.encode()).decode()
        except InvalidToken as exc:
            raise WebhookSecretKeyError(
                "a webhook secret cannot be decrypted with MXW_WEBHOOK_SECRET_KEY or "
                "MXW_WEBHOOK_SECRET_OLD_KEYS (a wrong or missing key)"
            ) from exc

    def reseal(self, stored: str) -> str | None:
        """The row's value under the current key, or None when it already is."""
        if stored.startswith(PLAINTEXT_PREFIX):
            return self.seal(stored)
        try:
            self._current.decrypt(stored.encode())
            return None
        except InvalidToken:
            return self.seal(self.open(stored))


async def seal_stored_secrets(pool: Pool, box: WebhookSecretBox) -> int:
    """Seal plaintext rows and re-seal rows of old keys under the current key; returns how
    many rows changed. Each update is conditional on the value read, so replicas starting
    together do not undo each other."""
    changed = 0
    rows = await pool.fetch("SELECT id, secret, previous_secret FROM webhook_endpoints")
    for row in rows:
        for column in ("secret", "previous_secret"):
            stored = row[column]
            if stored is None:
                continue
            new = box.reseal(stored)
            if new is None:
                continue
            result = await pool.execute(
                f"UPDATE webhook_endpoints SET {column} = $2 WHERE id = $1 AND {column} = $3",
                row["id"],
                new,
                stored,
            )
            changed += result == "UPDATE 1"
    return changed


if __name__ == "__main__":
    print(new_key())
