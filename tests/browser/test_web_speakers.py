"""Speakers on the web page, in a real browser: a colour per speaker, the name before each
line, renaming a speaker in place, and a filter that shows one speaker's lines. The gateway
runs in process (uvicorn, real Postgres and broker); the job's transcript and the
diarizer's rows are written as the stage services write them (no stack, no diarizer)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .helpers import served_gateway

SHORT = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "short_en.ogg"
USER = "sofia"
# (segment, start, end, text, words); turns make segment 1 two speakers' lines.
SEGMENTS = [
    (0, 0.0, 2.0, "Hello there.", [(0.0, 0.8, " Hello"), (0.9, 1.8, " there.")]),
    (
        1,
        2.0,
        5.0,
        "Hi Bob. How are you?",
        [(2.0, 2.4, " Hi"), (2.5, 2.9, " Bob."), (3.2, 4.8, " How are you?")],
    ),
]
TURNS = [(0.0, 1.9, "SPEAKER_01"), (2.0, 3.0, "SPEAKER_02"), (3.1, 5.0, "SPEAKER_01")]


@pytest.fixture(scope="module")
async def gateway(infra: Any, dev_issuer: Any) -> AsyncIterator[str]:
    async with served_gateway(infra, dev_issuer, "web-speaker") as url:
        yield url


@pytest.fixture(scope="module")
async def job_id(gateway: str, dev_issuer: Any, db: Any) -> str:
    """A finished job of USER's that asked for speakers, with every stage's rows."""
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        response = await client.post(
            "/jobs",
            headers={"Authorization": f"Bearer {dev_issuer.mint(USER)}"},
            params={"force": "true"},
            files={"file": ("talk.ogg", SHORT.read_bytes(), "audio/ogg")},
            data={"speakers": "true"},
        )
    assert response.status_code == 202, response.text
    job = uuid.UUID(response.json()["id"])
    for stage in ("transcribe", "diarize", "chunk", "embed"):
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state, progress, started_at, finished_at)"
            " VALUES ($1, $2, 'done', 1, now(), now())",
            job,
            stage,
        )
    await db.execute(
        "INSERT INTO transcripts (job_id, language, duration_s, model, text)"
        " VALUES ($1, 'en', 5.0, 'tiny.en', 'Hello there. Hi Bob. How are you?')",
        job,
    )
    for idx, start, end, text, words in SEGMENTS:
        await db.execute(
            "INSERT INTO segments (job_id, idx, start_s, end_s, text, words)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
            job,
            idx,
            start,
            end,
            text,
            [{"start": s, "end": e, "word": w} for s, e, w in words],
        )
    for idx, (start, end, speaker) in enumerate(TURNS):
        await db.execute(
            "INSERT INTO speaker_turns (job_id, idx, start_s, end_s, speaker)"
            " VALUES ($1, $2, $3, $4, $5)",
            job,
            idx,
            start,
            end,
            speaker,
        )
    await db.execute(
        "INSERT INTO job_speakers (job_id, label, talk_s)"
        " VALUES ($1, 'SPEAKER_01', 3.6), ($1, 'SPEAKER_02', 1.0)",
        job,
    )
    return str(job)


@pytest.fixture
async def page(browser: Any, gateway: str, job_id: str) -> AsyncIterator[Any]:
    """A signed-in tab on the job's page; fails the test on any page or console error."""
    context = await browser.new_context(viewport={"width": 1100, "height": 850})
    tab = await context.new_page()
    tab.set_default_timeout(30_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def console(msg: Any) -> None:
        # A user's 403 from /admin/system, and the live feeds' notifier (not run here).
        url = msg.location.get("url", "")
        if msg.type == "error" and not url.endswith("/admin/system") and "/ws/" not in msg.text:
            errors.append(f"console: {msg.text}")

    tab.on("console", console)
    await tab.goto(f"{gateway}/app/")
    await tab.fill("#dev-user", USER)
    await tab.click("form button[type=submit]")
    await tab.wait_for_selector("#nav:not([hidden])")
    await tab.evaluate("(h) => { location.hash = h; }", f"#/jobs/{job_id}")
    await tab.wait_for_selector("li.segment[data-speaker]")
    yield tab
    await context.close()
    assert not errors, errors


async def lines(page: Any) -> list[dict[str, Any]]:
    return await page.eval_on_selector_all(  # type: ignore[no-any-return]
        "li.segment",
        """els => els.map(li => ({
            speaker: li.dataset.speaker,
            name: li.querySelector('button.speaker').textContent,
            text: li.querySelector('.text').textContent,
            colour: getComputedStyle(li).getPropertyValue('--speaker').trim(),
            visible: !li.hidden,
        }))""",
    )


async def test_each_line_shows_its_speaker_in_the_speaker_colour(page: Any):
    shown = await lines(page)
    assert [(li["speaker"], li["name"], li["text"]) for li in shown] == [
        ("SPEAKER_01", "Speaker 1", "Hello there."),
        ("SPEAKER_02", "Speaker 2", "Hi Bob."),
        ("SPEAKER_01", "Speaker 1", "How are you?"),
    ]
    colours = [li["colour"] for li in shown]
    assert all(colours), colours
    assert colours[0] == colours[2] != colours[1]  # stable per label, distinct per speaker
    name_colour = await page.eval_on_selector("button.speaker", "b => getComputedStyle(b).color")
    assert name_colour != await page.eval_on_selector(
        "li.segment[data-speaker=SPEAKER_02] button.speaker", "b => getComputedStyle(b).color"
    )


async def test_click_a_name_to_rename_the_speaker_in_place(
    page: Any, gateway: str, dev_issuer: Any, job_id: str
):
    await page.click("li.segment >> nth=0 >> button.speaker")
    field = await page.wait_for_selector("input.speaker-name")
    assert await field.input_value() == "Speaker 1"
    await field.fill("Alice")
    await field.press("Enter")
    await page.wait_for_selector("li.segment[data-speaker=SPEAKER_01] button.speaker >> text=Alice")

    shown = await lines(page)
    assert [li["name"] for li in shown] == ["Alice", "Speaker 2", "Alice"]
    options = await page.eval_on_selector_all(
        "#speaker-filter option", "os => os.map(o => o.textContent)"
    )
    assert options == ["All speakers", "Alice", "Speaker 2"]
    async with httpx.AsyncClient(base_url=gateway) as client:
        listed = await client.get(
            f"/jobs/{job_id}/speakers", headers={"Authorization": f"Bearer {dev_issuer.mint(USER)}"}
        )
    assert [s["name"] for s in listed.json()["speakers"]] == ["Alice", "Speaker 2"]

    # Escape leaves the name as it was; the page keeps the new name after a fresh load.
    await page.click("li.segment >> nth=1 >> button.speaker")
    field = await page.wait_for_selector("input.speaker-name")
    await field.fill("Nobody")
    await field.press("Escape")
    await page.reload()
    await page.wait_for_selector("li.segment[data-speaker]")
    assert [li["name"] for li in await lines(page)] == ["Alice", "Speaker 2", "Alice"]


async def test_the_speaker_filter_shows_one_speakers_lines(page: Any):
    await page.select_option("#speaker-filter", "SPEAKER_02")
    shown = await lines(page)
    assert [(li["text"], li["visible"]) for li in shown] == [
        ("Hello there.", False),
        ("Hi Bob.", True),
        ("How are you?", False),
    ]
    await page.select_option("#speaker-filter", "SPEAKER_01")
    assert [li["visible"] for li in await lines(page)] == [True, False, True]
    await page.select_option("#speaker-filter", "")
    assert all(li["visible"] for li in await lines(page))
