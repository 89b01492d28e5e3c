"""Voice profiles on the web page, in a real browser: a speaker whose voice is close to one
of the user's profiles shows the suggestion with its similarity ("Alice? 0.99 — yes / no"),
yes names every line of it, and "Save as voice" makes a profile of another speaker. The
gateway runs in process (uvicorn, real Postgres and broker); the diarizer's rows, with
voice embeddings built for the test, are written as the diarizer writes them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from .helpers import served_gateway

SHORT = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "short_en.ogg"
USER = "vera"
SEGMENTS = [(0, 0.0, 2.0, "Hello there."), (1, 2.0, 5.0, "Hi, how are you?")]
TURNS = [(0.0, 2.0, "SPEAKER_01"), (2.0, 5.0, "SPEAKER_02")]


def voice(i: int, noise: float = 0.0) -> list[float]:
    v = np.zeros(192)
    v[i] = 1.0
    v += np.random.default_rng(i).normal(0, noise, 192)
    return list(v / np.linalg.norm(v))


@pytest.fixture(scope="module")
async def gateway(infra: Any, dev_issuer: Any) -> AsyncIterator[str]:
    async with served_gateway(infra, dev_issuer, "web-voice") as url:
        yield url


async def diarized_job(gateway: str, auth: dict[str, str], db: Any, voices: list[Any]) -> str:
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        response = await client.post(
            "/jobs",
            headers=auth,
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
        " VALUES ($1, 'en', 5.0, 'tiny.en', 'Hello there. Hi, how are you?')",
        job,
    )
    await db.executemany(
        "INSERT INTO segments (job_id, idx, start_s, end_s, text) VALUES ($1, $2, $3, $4, $5)",
        [(job, *s) for s in SEGMENTS],
    )
    await db.executemany(
        "INSERT INTO speaker_turns (job_id, idx, start_s, end_s, speaker)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(job, i, *t) for i, t in enumerate(TURNS)],
    )
    await db.executemany(
        "INSERT INTO job_speakers (job_id, label, talk_s, embedding) VALUES ($1, $2, $3, $4)",
        [(job, "SPEAKER_01", 2.0, voices[0]), (job, "SPEAKER_02", 3.0, voices[1])],
    )
    return str(job)


async def test_a_suggested_voice_is_confirmed_and_another_saved(
    browser: Any, gateway: str, dev_issuer: Any, db: Any
):
    auth = {"Authorization": f"Bearer {dev_issuer.mint(USER)}"}
    first = await diarized_job(gateway, auth, db, [voice(0), voice(1)])
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        named = await client.post(
            "/voices", headers=auth, json={"name": "Alice", "job_id": first, "label": "SPEAKER_02"}
        )
        assert named.status_code == 201, named.text
    # A later recording: Alice's voice is SPEAKER_01's now; SPEAKER_02 is someone new.
    later = await diarized_job(gateway, auth, db, [voice(1, 0.01), voice(7)])

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
            and not msg.location.get("url", "").endswith("/admin/system")
            and "/ws/" not in msg.text
            else None
        ),
    )
    await page.goto(f"{gateway}/app/")
    await page.fill("#dev-user", USER)
    await page.click("form button[type=submit]")
    await page.wait_for_selector("#nav:not([hidden])")
    await page.evaluate("(h) => { location.hash = h; }", f"#/jobs/{later}")

    hint = await page.wait_for_selector("li.voice[data-speaker=SPEAKER_01] .suggestion")
    text = await hint.text_content()
    assert text is not None
    assert text.startswith(("Alice? 0.99 — ", "Alice? 1.00 — ")), text
    assert await page.query_selector("li.voice[data-speaker=SPEAKER_02] .suggestion") is None

    await page.click("li.voice[data-speaker=SPEAKER_01] button[data-answer=yes]")
    await page.wait_for_selector("li.voice[data-speaker=SPEAKER_01] .voice-saved")
    await page.wait_for_selector("li.segment[data-speaker=SPEAKER_01] button.speaker >> text=Alice")

    await page.fill("li.voice[data-speaker=SPEAKER_02] input.voice-name", "Bob")
    await page.click("li.voice[data-speaker=SPEAKER_02] button.save-voice")
    await page.wait_for_selector("li.voice[data-speaker=SPEAKER_02] .voice-saved")
    await page.wait_for_selector("li.segment[data-speaker=SPEAKER_02] button.speaker >> text=Bob")
    await context.close()
    assert not errors, errors

    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        listed = (await client.get("/voices", headers=auth)).json()["items"]
    assert sorted((v["name"], v["samples"]) for v in listed) == [("Alice", 2), ("Bob", 1)]
