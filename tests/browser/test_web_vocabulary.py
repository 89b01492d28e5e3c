"""Custom vocabulary on the web page, in a real browser: the editor lists the user's terms,
adds (several at once), removes and saves them, and shows the server's reason when it
refuses the list; the upload form sends a job's own hotwords and may leave the user's
vocabulary out. The gateway runs in process (uvicorn, real Postgres and broker)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .helpers import served_gateway

SHORT = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "short_en.ogg"
USER = "wanda-words"


@pytest.fixture(scope="module")
async def gateway(infra: Any, dev_issuer: Any) -> AsyncIterator[str]:
    async with served_gateway(infra, dev_issuer, "web-vocabulary") as url:
        yield url


async def signed_in_page(browser: Any, gateway: str) -> tuple[Any, Any, list[str]]:
    context = await browser.new_context(viewport={"width": 1100, "height": 850})
    page = await context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text}")
            if msg.type == "error"
            and not msg.location.get("url", "").endswith(("/admin/system", "/vocabulary"))
            and "/ws/" not in msg.text
            and "422" not in msg.text  # the refused save below, reported on the page
            else None
        ),
    )
    await page.goto(f"{gateway}/app/")
    await page.fill("#dev-user", USER)
    await page.click("form button[type=submit]")
    await page.wait_for_selector("#nav:not([hidden])")
    return context, page, errors


async def terms_shown(page: Any) -> list[str]:
    return [await t.text_content() for t in await page.query_selector_all("li.vocab-term .term")]


async def test_the_vocabulary_is_edited_and_used_by_an_upload(
    browser: Any, gateway: str, dev_issuer: Any, tmp_path: Path
):
    auth = {"Authorization": f"Bearer {dev_issuer.mint(USER)}"}
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        put = await client.put("/vocabulary", headers=auth, json={"terms": ["Siobhan"]})
        assert put.status_code == 200, put.text

    context, page, errors = await signed_in_page(browser, gateway)
    await page.click("nav a[data-route=vocabulary]")
    await page.wait_for_selector("li.vocab-term[data-term=Siobhan]")
    assert await page.is_disabled("#vocab-save")

    await page.fill("#vocab-term", "Kubernetes, Xochitl")
    await page.click("#vocab-add")
    await page.fill("#vocab-term", "pgvector")
    await page.press("#vocab-term", "Enter")
    await page.click("li.vocab-term[data-term=Siobhan] button.remove-term")
    assert await terms_shown(page) == ["Kubernetes", "Xochitl", "pgvector"]
    assert "not saved yet" in (await page.text_content(".vocab-count") or "")
    await page.click("#vocab-save")
    await page.wait_for_selector("#vocab-save:disabled")
    assert (await page.text_content(".vocab-count") or "").startswith("3 of 50 terms")

    # A term too long: the server's reason is shown and nothing is stored.
    await page.fill("#vocab-term", "x" * 61)
    await page.click("#vocab-add")
    await page.click("#vocab-save")
    alert = await page.wait_for_selector(".vocab-error:not([hidden])")
    assert "at most 60 characters" in (await alert.text_content() or "")

    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        stored = (await client.get("/vocabulary", headers=auth)).json()["terms"]
    assert stored == ["Kubernetes", "Xochitl", "pgvector"]

    # The upload form: the job's own terms first, then the vocabulary.
    audio = tmp_path / "names.ogg"
    audio.write_bytes(SHORT.read_bytes())
    await page.click("nav a[data-route=upload]")
    await page.fill("#opt-hotwords", "Zyntrix, Niamh")
    await page.set_input_files("#files", str(audio))
    link = await page.wait_for_selector("li[data-file='names.ogg'] a.job-link")
    first = (await link.get_attribute("href") or "").rsplit("/", 1)[-1]
    # And one without the vocabulary.
    await page.fill("#opt-hotwords", "Zyntrix")
    await page.uncheck("#opt-use-vocabulary")
    await page.select_option("#opt-decoding", "sequential")  # and a decoding mode of its own
    other = tmp_path / "alone.ogg"
    other.write_bytes(SHORT.read_bytes() + b"\0")  # other bytes: a new job, not a duplicate
    await page.set_input_files("#files", str(other))
    link = await page.wait_for_selector("li[data-file='alone.ogg'] a.job-link")
    second = (await link.get_attribute("href") or "").rsplit("/", 1)[-1]
    # The job's page says what the transcriber is told.
    await page.click("li[data-file='names.ogg'] a.job-link")
    shown = await page.wait_for_selector("dl.facts .hotwords")
    assert await shown.text_content() == "Zyntrix, Niamh, Kubernetes, Xochitl, pgvector"
    await context.close()
    assert not errors, errors

    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        jobs = [(await client.get(f"/jobs/{j}", headers=auth)).json() for j in (first, second)]
    assert jobs[0]["options"]["hotwords"] == [
        "Zyntrix",
        "Niamh",
        "Kubernetes",
        "Xochitl",
        "pgvector",
    ]
    assert jobs[1]["options"]["hotwords"] == ["Zyntrix"]
    assert (jobs[0]["options"]["decoding"], jobs[1]["options"]["decoding"]) == (None, "sequential")
