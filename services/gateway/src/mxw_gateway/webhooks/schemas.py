"""Webhook endpoints and their delivery attempts, as the API shows them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EventType = Literal["job.done", "job.failed", "job.cancelled"]
DEFAULT_EVENT_TYPES: list[EventType] = ["job.done", "job.failed"]


def _unique(values: list[EventType] | None) -> list[EventType] | None:
    if values is None:
        return None
    return list(dict.fromkeys(values))


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=4096, description="http(s) URL the notifier posts to.")
    description: str | None = Field(default=None, max_length=500)
    event_types: list[EventType] = Field(
        default_factory=lambda: list(DEFAULT_EVENT_TYPES), min_length=1, max_length=3
    )

    _unique_types = field_validator("event_types")(_unique)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=4096)
    description: str | None = Field(default=None, max_length=500)
    event_types: list[EventType] | None = Field(default=None, min_length=1, max_length=3)
    enabled: bool | None = Field(
        default=None,
        description="false switches the endpoint off; true switches it on again, also after "
        "the notifier disabled it for sustained failure.",
    )

    _unique_types = field_validator("event_types")(_unique)


class Webhook(BaseModel):
    id: uuid.UUID
    owner_id: str
    url: str
    description: str | None
    event_types: list[str]
    enabled: bool = Field(description="The owner's switch.")
    active: bool = Field(
        description="Deliveries are made: enabled, and not disabled for sustained failure."
    )
    disabled_at: datetime | None = Field(description="When the notifier disabled it, if so.")
    disabled_reason: str | None
    consecutive_failures: int = Field(description="Failed attempts in a row since enabling.")
    last_success_at: datetime | None
    last_failure_at: datetime | None
    previous_secret_valid_until: datetime | None = Field(
        description="After a rotation, until when deliveries also carry the old signature."
    )
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(Webhook):
    secret: str = Field(
        description="Standard Webhooks signing secret (whsec_…). Shown only when created or "
        "rotated: store it."
    )


class WebhookList(BaseModel):
    items: list[Webhook]


class RotatedSecret(BaseModel):
    secret: str
    previous_secret_valid_until: datetime


class TestDelivery(BaseModel):
    message_id: str = Field(description="The webhook-id the test delivery carries.")
    requested_at: datetime


class Attempt(BaseModel):
    id: int
    delivery_id: int
    message_id: str
    event_type: str
    job_id: uuid.UUID | None
    attempt: int
    attempted_at: datetime
    duration_ms: float | None
    status_code: int | None
    outcome: Literal["delivered", "failed", "refused"]
    error: str | None
    response_excerpt: str | None
    delivery_state: Literal["pending", "delivered", "failed"]


class AttemptPage(BaseModel):
    items: list[Attempt]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page.")
