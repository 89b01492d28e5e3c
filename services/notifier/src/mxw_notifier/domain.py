"""Pure rules of the notifier: what a status message looks like, where a client resumes,
who may watch a job, and where a WebSocket client put its token."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mxw_shared.auth import Principal
from mxw_shared.contracts import Envelope, JobState, JobStatus

TERMINAL_STATES = frozenset({JobState.done.value, JobState.failed.value, JobState.cancelled.value})
BEARER_SUBPROTOCOL_PREFIX = "bearer."


@dataclass(frozen=True)
class StatusMessage:
    """One entry of a job's status feed, the same shape from history and from Kafka."""

    event_id: str
    job_id: uuid.UUID
    stage: str
    state: str
    progress: float
    message: str | None
    error: str | None
    time: datetime

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "job_id": str(self.job_id),
            "stage": self.stage,
            "state": self.state,
            "progress": self.progress,
            "message": self.message,
            "error": self.error,
            "time": self.time.isoformat(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_event(cls, envelope: Envelope, event: JobStatus) -> StatusMessage:
        return cls(
            event_id=envelope.id,
            job_id=event.job_id,
            stage=event.stage.value,
            state=event.state.value,
            progress=event.progress,
            message=event.message,
            error=event.error,
            time=envelope.time,
        )


@dataclass(frozen=True)
class HistoryEntry:
    """A row of `job_events`: its serial id orders the history and is a resume point."""

    id: int
    status: StatusMessage


@dataclass(frozen=True)
class HistoryView:
    to_send: list[StatusMessage]
    # Every event id of the job's history, sent or skipped by `after`: live copies of these
    # are duplicates.
    seen: set[str]
    finished: bool


def select_history(entries: Sequence[HistoryEntry], after: str | None) -> HistoryView:
    """What a client resuming after `after` (a job_events id or an event id) still needs.

    An event id this history does not know (a record published without the database) resumes
    from the beginning: the client de-duplicates by event id, a gap it could not repair.
    """
    ordered = sorted(entries, key=lambda e: e.id)
    start = 0
    if after:
        if after.isdigit():
            start = next((i for i, e in enumerate(ordered) if e.id > int(after)), len(ordered))
        else:
            start = next((i + 1 for i, e in enumerate(ordered) if e.status.event_id == after), 0)
    return HistoryView(
        to_send=[e.status for e in ordered[start:]],
        seen={e.status.event_id for e in ordered},
        # The latest event decides: a job reprocessed after `done` is running again.
        finished=bool(ordered) and ordered[-1].status.terminal,
    )


def may_watch(principal: Principal, owner_id: str | None) -> bool:
    """Owners watch their jobs, admins any job; a missing job looks the same as a foreign one."""
    if owner_id is None:
        return False
    return principal.is_admin or principal.sub == owner_id


def bearer_from_header(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


@dataclass(frozen=True)
class WebSocketCredentials:
    token: str | None
    # Browsers fail a handshake whose offered sub-protocols get no answer, so one is echoed.
    subprotocol: str | None


def websocket_credentials(
    query_token: str | None, authorization: str | None, subprotocols: Iterable[str]
) -> WebSocketCredentials:
    """The token from `?token=`, the Authorization header, or a first sub-protocol
    `bearer.<token>` (browsers cannot set headers on a WebSocket), in that order."""
    offered = list(subprotocols)
    from_protocol: str | None = None
    if offered and offered[0].startswith(BEARER_SUBPROTOCOL_PREFIX):
        from_protocol = offered[0].removeprefix(BEARER_SUBPROTOCOL_PREFIX) or None
    # Echo an application protocol when one is offered beside the token, never the token
    # unless it is all there is.
    others = [p for p in offered if not p.startswith(BEARER_SUBPROTOCOL_PREFIX)]
    subprotocol = others[0] if others else (offered[0] if offered else None)
    token = (query_token or None) or bearer_from_header(authorization) or from_protocol
    return WebSocketCredentials(token=token, subprotocol=subprotocol)


def parse_job_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None
