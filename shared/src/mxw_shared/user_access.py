"""Whether a user may still use the system: `users.disabled`, which the gateway's admins set,
read by the services that take user tokens without going through the gateway (the
notifier's feeds, the embedder's API).

A token stays valid until it expires, so this is what takes a disabled user's access away:
each answer is remembered for `user_access_cache_s` (at most a minute), which bounds both the
lookups and how long a disabled user keeps access. A user the gateway never saw has no row
and is not disabled.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from mxw_shared.db import Pool

# Users remembered per process; the least recently checked go first.
MAX_CACHED_USERS = 100_000


class UserDisabled(Exception):
    """The account is disabled (HTTP 403, WebSocket close 4403)."""

    def __init__(self, sub: str) -> None:
        super().__init__("this account is disabled")
        self.sub = sub


class UserAccess:
    def __init__(
        self, pool: Pool, cache_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pool = pool
        self.cache_s = cache_s
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, bool]] = OrderedDict()

    async def is_disabled(self, sub: str) -> bool:
        now = self._clock()
        cached = self._cache.get(sub)
        if cached is not None and now - cached[0] < self.cache_s:
            self._cache.move_to_end(sub)
            return cached[1]
        disabled = bool(await self.pool.fetchval("SELECT disabled FROM users WHERE id = $1", sub))
        self._cache[sub] = (now, disabled)
        self._cache.move_to_end(sub)
        while len(self._cache) > MAX_CACHED_USERS:
            self._cache.popitem(last=False)
        return disabled

    async def check(self, sub: str) -> None:
        """Raises UserDisabled for a disabled account."""
        if await self.is_disabled(sub):
            raise UserDisabled(sub)
