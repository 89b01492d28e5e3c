"""users.disabled as the notifier and the embedder read it (real Postgres)."""

import uuid

import pytest
from mxw_shared.user_access import UserAccess, UserDisabled


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_m5_disabled_flag_is_reread_after_the_cache_period(db):
    user = f"m5-{uuid.uuid4().hex[:8]}"
    clock = Clock()
    access = UserAccess(db, cache_s=60, clock=clock)
    assert await access.is_disabled(user) is False  # never seen by the gateway: no row
    await access.check(user)

    await db.execute("INSERT INTO users (id, disabled) VALUES ($1, true)", user)
    clock.now = 59.0
    assert await access.is_disabled(user) is False  # still the remembered answer
    clock.now = 60.0
    with pytest.raises(UserDisabled, match="this account is disabled"):
        await access.check(user)

    await db.execute("UPDATE users SET disabled = false WHERE id = $1", user)
    clock.now = 120.0
    assert await access.is_disabled(user) is False


def test_m5_cache_period_is_at_most_a_minute():
    from mxw_shared.settings import CommonSettings
    from pydantic import ValidationError

    assert CommonSettings().user_access_cache_s == 60
    with pytest.raises(ValidationError):
        CommonSettings(user_access_cache_s=61)
