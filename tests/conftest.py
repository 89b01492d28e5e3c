"""Fixtures of the tests that run the whole stack as real processes (e2e, faults)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from mxw_local.harness import Stack, run_stack


@pytest.fixture(scope="session")
def launch_stack() -> Callable[..., AbstractContextManager[Stack]]:
    return run_stack
