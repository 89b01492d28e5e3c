"""Pure rules of webhook delivery: which events are sent, what the body and the Standard
Webhooks headers are, when to retry, when an endpoint counts as dead, and which targets
may be called at all: mxw_shared.netguard (no private, loopback or link-local addresses
unless allowed), which the gateway checks the URL with at registration too."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from standardwebhooks import Webhook

from mxw_notifier.domain import StatusMessage

TEST_EVENT_TYPE = "webhook.test"
USER_AGENT = "MxWhisper-Webhooks/1.0"


def event_type(state: str) -> str | None:
    """The webhook event a terminal job state is announced as."""
    return f"job.{state}" if state in ("done", "failed", "cancelled") else None


def job_event_payload(kind: str, status: StatusMessage, filename: str | None) -> dict[str, Any]:
    """The body of a job event: the Standard Webhooks shape {type, timestamp, data}."""
    return {
        "type": kind,
        "timestamp": status.time.isoformat(),
        "data": {
            "job_id": str(status.job_id),
            "seq": status.seq,
            "state": status.state,
            "stage": status.stage,
            "progress": status.progress,
            "message": status.message,
            "error": status.error,
            "filename": filename,
        },
    }


def body_of(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def signature_header(secrets: Iterable[str], msg_id: str, at: datetime, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, space separated, so that during a
    rotation receivers holding either the new or the previous secret can verify."""
    return " ".join(Webhook(secret).sign(msg_id, at, body) for secret in secrets)


def backoff_s(attempt: int, base_s: float, max_s: float, jitter: float) -> float:
    """Delay after failed attempt `attempt` (1-based): base * 2^(attempt-1), capped, then
    scaled by 1 + 0.2 * jitter (jitter in [-1, 1]) so retries of many endpoints spread."""
    delay = min(base_s * 2.0 ** max(attempt - 1, 0), max_s)
    return max(0.0, delay * (1 + 0.2 * max(-1.0, min(1.0, jitter))))


def should_disable(
    consecutive_failures: int,
    failing_for_s: float,
    after_failures: int,
    after_s: float,
) -> bool:
    """Sustained failure: enough failed attempts in a row, and for long enough."""
    return consecutive_failures >= after_failures and failing_for_s >= after_s
