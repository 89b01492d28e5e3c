"""Pure rules of the notifier: what a status message looks like, where a client resumes,
who may watch what, where a client put its token, how a connection's queue coalesces, and
the close codes that say why a connection ended."""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import IntEnum
from functools import cached_property
from typing import Any

from mxw_shared.auth import Principal
from mxw_shared.contracts import Envelope, JobState, JobStatus
from mxw_shared.db import INT_MAX

TERMINAL_STATES = frozenset({JobState.done.value, JobState.failed.value, JobState.cancelled.value})
BEARER_SUBPROTOCOL_PREFIX = "bearer."
BEARER_SUBPROTOCOL = "bearer"


class CloseCode(IntEnum):
    """Why the server closed a feed. 4xxx are application codes (RFC 6455 §7.4.2); the last
    three digits mirror the HTTP status with the same meaning."""

    # The watched job reached a terminal state (single-job feed only).
    FINISHED = 1000
    # An unexpected server error; reconnect with backoff.
    INTERNAL_ERROR = 1011
    # A malformed `after` / `resume` parameter.
    BAD_REQUEST = 4400
    # No token, an invalid or expired one, or the token expired while connected.
    UNAUTHORIZED = 4401
    # `all=true` asked by someone who is not an admin.
    FORBIDDEN = 4403
    # The job does not exist or is not yours (the two look the same).
    NOT_FOUND = 4404
    # The client fell too far behind the live events (reconnect and resume).
    TOO_SLOW = 4408
    # Too many open feeds for this user on this replica.
    TOO_MANY = 4429


@dataclass(frozen=True)
class StatusMessage:
    """One entry of a job's status feed, the same shape from history and from Kafka."""

    event_id: str
    job_id: uuid.UUID
    seq: int | None
    stage: str
    state: str
    progress: float
    message: str | None
    error: str | None
    time: datetime
    owner_id: str | None = None
    # True when earlier undelivered updates of this job were dropped in favour of this one
    # (a client that fell behind): its seq then jumps on purpose.
    coalesced: bool = False

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": str(self.job_id),
            "seq": self.seq,
            "event_id": self.event_id,
            "stage": self.stage,
            "state": self.state,
            "progress": self.progress,
            "message": self.message,
            "error": self.error,
            "time": self.time.isoformat(),
            "coalesced": self.coalesced,
        }

    @cached_property
    def encoded(self) -> str:
        """Encoded once, however many feeds send it."""
        return json.dumps(self.to_dict())

    def to_json(self) -> str:
        return self.encoded

    @classmethod
    def from_event(cls, envelope: Envelope, event: JobStatus) -> StatusMessage:
        return cls(
            event_id=envelope.id,
            job_id=event.job_id,
            seq=event.seq,
            stage=event.stage.value,
            state=event.state.value,
            progress=event.progress,
            message=event.message,
            error=event.error,
            time=envelope.time,
            owner_id=event.owner_id,
        )


@dataclass(frozen=True)
class HistoryView:
    to_send: list[StatusMessage]
    # The job's latest seq (0 without history): live events up to it are duplicates.
    latest_seq: int
    # The latest event is terminal: a job reprocessed after `done` is running again.
    finished: bool


def select_history(entries: Sequence[StatusMessage], after_seq: int) -> HistoryView:
    """What a client that has seen 1..after_seq of a job still needs from its history."""
    ordered = sorted(entries, key=lambda e: e.seq or 0)
    return HistoryView(
        to_send=[e for e in ordered if (e.seq or 0) > after_seq],
        latest_seq=(ordered[-1].seq or 0) if ordered else 0,
        finished=bool(ordered) and ordered[-1].terminal,
    )


def parse_after(raw: str | None) -> int:
    """`after` / Last-Event-ID: the last seq the client has (0 or absent: from the start)."""
    if raw is None or raw.strip() == "":
        return 0
    value = raw.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 10 or int(value) > INT_MAX:
        raise ValueError(f"after must be a sequence number (an integer from 0 to {INT_MAX})")
    return int(value)


def parse_resume(raw: str | None, max_jobs: int) -> dict[uuid.UUID, int]:
    """`resume=<job id>:<seq>,<job id>:<seq>…` of `WS /ws/jobs`: per job, the last seq the
    client has (0: the whole history)."""
    if raw is None or raw.strip() == "":
        return {}
    positions: dict[uuid.UUID, int] = {}
    for item in raw.split(","):
        job, sep, seq = item.strip().partition(":")
        if not sep:
            raise ValueError("resume entries are <job id>:<seq>")
        job_id = parse_job_id(job)
        if job_id is None:
            raise ValueError(f"resume: {job[:40]!r} is not a job id")
        positions[job_id] = max(positions.get(job_id, 0), parse_after(seq))
    if len(positions) > max_jobs:
        raise ValueError(f"resume names more than {max_jobs} jobs")
    return positions


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
class Credentials:
    token: str | None
    # Browsers fail a WebSocket handshake whose offered sub-protocols get no answer, so one
    # of them is echoed.
    subprotocol: str | None


def credentials(
    query_token: str | None, authorization: str | None, subprotocols: Iterable[str] = ()
) -> Credentials:
    """The bearer token from, in this order: the Authorization header (non-browser
    clients), the Sec-WebSocket-Protocol bearer convention (either one sub-protocol
    `bearer.<token>`, or `bearer` followed by the token as the next one), or the
    `access_token` query parameter (browsers; RFC 6750 §2.3)."""
    offered = list(subprotocols)
    from_protocol: str | None = None
    subprotocol: str | None = None
    for i, protocol in enumerate(offered):
        if protocol.startswith(BEARER_SUBPROTOCOL_PREFIX):
            from_protocol = protocol.removeprefix(BEARER_SUBPROTOCOL_PREFIX) or None
            subprotocol = protocol
            break
        if protocol == BEARER_SUBPROTOCOL and i + 1 < len(offered):
            from_protocol = offered[i + 1] or None
            subprotocol = BEARER_SUBPROTOCOL
            break
    token_protocols = {subprotocol, from_protocol} - {None}
    others = [p for p in offered if p not in token_protocols]
    # An application protocol offered beside the token is preferred; the token itself is
    # echoed only when it is all there is (it is the client's own).
    if others:
        subprotocol = others[0]
    token = bearer_from_header(authorization) or from_protocol or (query_token or None)
    return Credentials(token=token, subprotocol=subprotocol)


def parse_job_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


class FellBehind(Exception):
    """The client's queue overflowed even after coalescing, or its oldest undelivered event
    waited longer than allowed."""


class ClientQueue:
    """A connection's bounded queue of undelivered messages.

    Normally every message stays (gap-free). When more than `capacity` wait, the queue keeps
    only the latest message of each job (marked `coalesced`), since a client that fell behind
    wants the current state, not the way there. A client still over capacity after that, or
    whose oldest undelivered message is older than `max_behind_s`, has fallen too far behind.
    Offering never blocks, so one slow client cannot delay the fan-out to others.
    """

    def __init__(self, capacity: int, max_behind_s: float) -> None:
        self.capacity = capacity
        self.max_behind_s = max_behind_s
        self._items: deque[tuple[float, StatusMessage]] = deque()
        self.coalesced_total = 0

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, message: StatusMessage, now: float) -> None:
        """Queue `message` (arrived at `now`, monotonic seconds); raises FellBehind."""
        if self._items and now - self._items[0][0] > self.max_behind_s:
            raise FellBehind(f"oldest undelivered event waited over {self.max_behind_s:g} s")
        self._items.append((now, message))
        if len(self._items) > self.capacity:
            self._coalesce()
            if len(self._items) > self.capacity:
                raise FellBehind(f"more than {self.capacity} jobs with undelivered events")

    def take_all(self) -> list[StatusMessage]:
        items = [message for _, message in self._items]
        self._items.clear()
        return items

    def _coalesce(self) -> None:
        latest: dict[uuid.UUID, tuple[float, StatusMessage, bool]] = {}
        for queued_at, message in self._items:
            previous = latest.pop(message.job_id, None)
            if previous is None:
                latest[message.job_id] = (queued_at, message, message.coalesced)
            else:  # keep when the oldest of them was queued: it measures how far behind
                self.coalesced_total += 1
                latest[message.job_id] = (previous[0], message, True)
        self._items = deque(
            (queued_at, replace(message, coalesced=True) if merged else message)
            for queued_at, message, merged in latest.values()
        )


@dataclass(frozen=True)
class Placement:
    """What the sender does with a live message, given the last seq it sent for the job."""

    send: bool
    # Fetch the history strictly between these seqs first (a gap in the live stream).
    fill_after: int | None = None
    fill_before: int | None = None


def place(message: StatusMessage, last_sent: int | None) -> Placement:
    """Dedupe and gap-detection by seq. `last_sent` None: nothing sent for this job yet
    (the first live event sets the start). A message without seq (published by another
    system) only says "something happened": the history after `last_sent` is read instead."""
    if message.seq is None:
        if last_sent is None:
            return Placement(send=False)
        return Placement(send=False, fill_after=last_sent, fill_before=None)
    if last_sent is None:
        return Placement(send=True)
    if message.seq <= last_sent:
        return Placement(send=False)  # a duplicate (redelivery, history overlap)
    if message.seq > last_sent + 1 and not message.coalesced:
        return Placement(send=True, fill_after=last_sent, fill_before=message.seq)
    return Placement(send=True)
