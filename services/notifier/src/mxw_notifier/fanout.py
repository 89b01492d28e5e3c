"""In-process fan-out of live status events to the WebSocket connections watching a job.

Publishing never waits: each connection has a bounded queue, and a connection whose queue is
full is dropped (its handler closes the socket) instead of slowing the consumer down.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

from mxw_notifier.domain import StatusMessage


class Subscription:
    def __init__(self, job_id: uuid.UUID, maxsize: int) -> None:
        self.job_id = job_id
        self.queue: asyncio.Queue[StatusMessage] = asyncio.Queue(maxsize=maxsize)
        self.dropped = asyncio.Event()

    async def get(self) -> StatusMessage:
        return await self.queue.get()


class JobFanout:
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._by_job: dict[uuid.UUID, set[Subscription]] = defaultdict(set)
        self.dropped_total = 0

    def subscribe(self, job_id: uuid.UUID) -> Subscription:
        subscription = Subscription(job_id, self.queue_size)
        self._by_job[job_id].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        watchers = self._by_job.get(subscription.job_id)
        if watchers is None:
            return
        watchers.discard(subscription)
        if not watchers:
            del self._by_job[subscription.job_id]

    def publish(self, status: StatusMessage) -> int:
        """Hand `status` to every watcher of its job; returns how many took it."""
        delivered = 0
        for subscription in list(self._by_job.get(status.job_id, ())):
            try:
                subscription.queue.put_nowait(status)
                delivered += 1
            except asyncio.QueueFull:
                self.unsubscribe(subscription)
                subscription.dropped.set()
                self.dropped_total += 1
        return delivered

    def watchers(self, job_id: uuid.UUID) -> int:
        return len(self._by_job.get(job_id, ()))
