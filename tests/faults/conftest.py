"""Fixtures of the fault suites: each module starts its own `stack`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest


@pytest.fixture(scope="module")
async def db(stack: Any) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the module's stack's database."""
    pool = await asyncpg.create_pool(stack.info.database_url, min_size=1, max_size=3)
    yield pool
    await pool.close()
