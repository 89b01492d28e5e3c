"""Headless Chromium from Debian's `chromium` package, driven by Playwright for Python (the
system browser: Playwright never downloads one). Without the binary these tests skip with a
reason; `./mxw test` installs it first when it runs as root, as CI does."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest


def chromium_path() -> str | None:
    explicit = os.environ.get("MXW_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium); "
            "./mxw test installs it when run as root"
        )
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # Playback starts from clicks anyway; this keeps a slow first frame from
            # counting as "no user gesture".
            args=["--autoplay-policy=no-user-gesture-required", "--disable-gpu"],
        )
        try:
            yield chromium
        finally:
            await chromium.close()
