"""In-process fan-out of live status events to the feeds (WebSockets, SSE streams) open on
this replica.

Publishing never waits: each feed has a bounded, coalescing queue (domain.ClientQueue), and a
feed that falls too far behind is dropped (its handler closes it) instead of slowing the
consumer, and so every other client, down.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import TypeVar

from mxw_shared.auth import Principal
from prometheus_client import Counter

from mxw_notifier.domain import ClientQueue, FellBehind, StatusMessage

DROPPED_CLIENTS = Counter(
    "mxw_notifier_ws_dropped_clients_total",
    "Feeds (WebSocket or SSE) closed because the client fell too far behind",
)
COALESCED = Counter(
    "mxw_notifier_coalesced_events_total",
    "Undelivered status events replaced by a newer one of the same job (slow clients)",
)


K = TypeVar("K")


class Subscriber:
    """One open feed: a single job, all of its user's jobs, or (admins) every job."""

    def __init__(
        self,
        principal: Principal,
        *,
        job_id: uuid.UUID | None,
        everything: bool,
        capacity: int,
        max_behind_s: float,
    ) -> None:
        self.principal = principal
        self.job_id = job_id
        self.everything = everything
        self.queue = ClientQueue(capacity, max_behind_s)
        self._wakeup = asyncio.Event()
        self.fell_behind: str | None = None
        self.dropped = asyncio.Event()

    def offer(self, message: StatusMessage, now: float) -> bool:
        if self.fell_behind is not None:
            return False
        before = self.queue.coalesced_total
        try:
            self.queue.offer(message, now)
        except FellBehind as exc:
            self.fell_behind = str(exc)
            self.queue.take_all()  # nothing of it will be sent
            self.dropped.set()
            self._wakeup.set()
            return False
        finally:
            if self.queue.coalesced_total != before:
                COALESCED.inc(self.queue.coalesced_total - before)
        self._wakeup.set()
        return True

    async def next_batch(self, timeout_s: float | None = None) -> list[StatusMessage]:
        """The queued messages (maybe none after `timeout_s`); raises FellBehind once the
        feed was dropped."""
        if not len(self.queue) and self.fell_behind is None:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout_s)
            except TimeoutError:
                return []
        if self.fell_behind is not None:
            raise FellBehind(self.fell_behind)
        return self.queue.take_all()


class Hub:
    """Who is watching what on this replica."""

    def __init__(self) -> None:
        self._by_job: dict[uuid.UUID, set[Subscriber]] = defaultdict(set)
        self._by_owner: dict[str, set[Subscriber]] = defaultdict(set)
        self._everything: set[Subscriber] = set()
        self.dropped_total = 0

    def add(self, subscriber: Subscriber) -> None:
        if subscriber.job_id is not None:
            self._by_job[subscriber.job_id].add(subscriber)
        elif subscriber.everything:
            self._everything.add(subscriber)
        else:
            self._by_owner[subscriber.principal.sub].add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        self._everything.discard(subscriber)
        if subscriber.job_id is not None:
            _discard(self._by_job, subscriber.job_id, subscriber)
        _discard(self._by_owner, subscriber.principal.sub, subscriber)

    def publish(self, message: StatusMessage) -> int:
        """Offer `message` to every feed that may want it; returns how many took it. Feeds of
        the event's owner get it by the owner the event names; each feed checks the job's
        real owner before sending (a record on the topic is not proof of ownership)."""
        targets: Iterable[Subscriber] = set().union(
            self._by_job.get(message.job_id, ()),
            self._by_owner.get(message.owner_id or "", ()),
            self._everything,
        )
        now = time.monotonic()
        taken = 0
        for subscriber in targets:
            if subscriber.offer(message, now):
                taken += 1
            else:
                self.remove(subscriber)
                self.dropped_total += 1
                DROPPED_CLIENTS.inc()
        return taken

    def wants(self, job_id: uuid.UUID, owner_id: str | None) -> bool:
        """Whether any feed here may want an event of this job and owner."""
        return bool(
            self._everything or job_id in self._by_job or (owner_id or "") in self._by_owner
        )

    def watchers(self, job_id: uuid.UUID) -> int:
        return len(self._by_job.get(job_id, ()))

    @property
    def open_feeds(self) -> int:
        feeds: set[Subscriber] = set(self._everything)
        for group in (*self._by_job.values(), *self._by_owner.values()):
            feeds |= group
        return len(feeds)


def _discard(index: dict[K, set[Subscriber]], key: K, subscriber: Subscriber) -> None:
    watchers = index.get(key)
    if watchers is not None:
        watchers.discard(subscriber)
        if not watchers:
            del index[key]
