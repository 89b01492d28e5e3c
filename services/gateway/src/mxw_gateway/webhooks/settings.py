"""Webhook settings, read from the same MXW_WEBHOOK_* variables the notifier reads (the
secret key settings included: the gateway seals, the notifier opens)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from mxw_shared.webhook_secrets import WebhookSecretSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class WebhookSettings(WebhookSecretSettings):
    model_config = SettingsConfigDict(env_prefix="MXW_", extra="ignore")

    # Private, loopback, link-local, multicast and reserved targets are refused unless
    # webhook_allow_private, or the address lies in webhook_allowed_networks (CIDR list).
    webhook_allow_private: bool = False
    webhook_allowed_networks: list[str] = Field(default_factory=list)
    webhook_max_endpoints_per_user: int = Field(default=20, ge=1)
    webhook_max_url_chars: int = Field(default=2048, ge=16)
    # After a rotation the previous secret signs too (a second signature) for this long,
    # so receivers can switch without losing a delivery.
    webhook_secret_rotation_grace_s: float = Field(default=24 * 3600.0, ge=0)
    webhook_resolve_timeout_s: float = Field(default=5.0, gt=0)


def webhook_settings_of(app: FastAPI) -> WebhookSettings:
    """Read once per app from the environment (app.state.webhook_settings overrides)."""
    settings: WebhookSettings | None = getattr(app.state, "webhook_settings", None)
    if settings is None:
        settings = WebhookSettings()
        app.state.webhook_settings = settings
    return settings


def get_webhook_settings(request: Request) -> WebhookSettings:
    return webhook_settings_of(request.app)
