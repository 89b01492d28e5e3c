"""The transcript editor on a job's page, in a real browser: correct a word and save, split
a segment at the cursor with the keyboard, join lines (keys and button), a line's start and
end at the player's time (and a refused one), the conflict when the transcript changed behind
the page's back (and reloading it without losing the unsaved text), revert from the history
panel, the unsaved-change marker and its guards, and the player's keys and speed.

The gateway runs in process (uvicorn, real Postgres and broker); the job's audio is a real
upload (espeak's solar_and_bread.ogg), its transcript is written as the transcriber writes
it (no transcriber runs: the test would wait a minute for Whisper on two cores for text
known in advance). Every edit goes through the gateway's edit API, and each test reads the
result back through that API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .helpers import served_gateway

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "solar_and_bread.ogg"
USER = "edna-editor"
# The four sentences of the clip (15.7 s), as the transcriber stores them.
SEGMENTS = [
    (0.0, 3.2, " Solar panels turn sunlight into electricity."),
    (3.2, 7.6, " Engineers install them on rooftops to power homes during the day."),
    (7.6, 11.6, " The recipe needs two cups of flour, one egg and a pinch of salt."),
    (11.6, 15.6, " Bake the bread in a hot oven for forty minutes."),
]


def words(start: float, end: float, text: str) -> list[dict[str, Any]]:
    """Word times spread over the segment by length, as Whisper's look."""
    parts = [f" {w}" for w in text.split()]
    total = sum(len(p) for p in parts)
    out, t = [], start
    for p in parts:
        d = (end - start) * len(p) / total
        out.append({"start": round(t, 3), "end": round(t + d, 3), "word": p, "probability": 0.9})
        t += d
    return out


@pytest.fixture(scope="module")
async def gateway(infra: Any, dev_issuer: Any) -> AsyncIterator[str]:
    async with served_gateway(infra, dev_issuer, "web-editor") as url:
        yield url


@pytest.fixture
def auth(dev_issuer: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {dev_issuer.mint(USER)}"}


async def finished_job(
    gateway: str,
    auth: dict[str, str],
    db: Any,
    segments: list[tuple[float, float, str]] = SEGMENTS,
    turns: list[tuple[float, float, str]] | None = None,
) -> str:
    """A finished job of USER's, its transcript (and speaker turns) as the stages write them."""
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
        response = await client.post(
            "/jobs",
            headers=auth,
            params={"force": "true"},
            files={"file": ("solar.ogg", AUDIO.read_bytes(), "audio/ogg")},
            data={"word_timestamps": "true", "speakers": "true" if turns else "false"},
        )
    assert response.status_code == 202, response.text
    job = uuid.UUID(response.json()["id"])
    stages = (
        ("transcribe", "diarize", "chunk", "embed") if turns else ("transcribe", "chunk", "embed")
    )
    for stage in stages:
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state, progress, started_at, finished_at)"
            " VALUES ($1, $2, 'done', 1, now(), now())",
            job,
            stage,
        )
    await db.execute(
        "INSERT INTO transcripts (job_id, language, duration_s, model, text)"
        " VALUES ($1, 'en', 15.7, 'tiny.en', $2)",
        job,
        "".join(text for _, _, text in segments).strip(),
    )
    for idx, (start, end, text) in enumerate(segments):
        await db.execute(
            "INSERT INTO segments (job_id, idx, start_s, end_s, text, words)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
            job,
            idx,
            start,
            end,
            text,
            words(start, end, text),
        )
    for idx, (start, end, speaker) in enumerate(turns or []):
        await db.execute(
            "INSERT INTO speaker_turns (job_id, idx, start_s, end_s, speaker)"
            " VALUES ($1, $2, $3, $4, $5)",
            job,
            idx,
            start,
            end,
            speaker,
        )
    if turns:
        await db.execute(
            "INSERT INTO job_speakers (job_id, label, talk_s)"
            " VALUES ($1, 'SPEAKER_01', 10), ($1, 'SPEAKER_02', 5)",
            job,
        )
    return str(job)


@pytest.fixture
async def job_id(gateway: str, auth: dict[str, str], db: Any) -> str:
    """One job per test: edits do not leak between tests."""
    return await finished_job(gateway, auth, db)


@pytest.fixture
async def page(browser: Any, gateway: str, job_id: str) -> AsyncIterator[Any]:
    """A signed-in tab on the job's page; fails the test on any page or console error."""
    context = await browser.new_context(viewport={"width": 1100, "height": 850})
    tab = await context.new_page()
    tab.set_default_timeout(30_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def console(msg: Any) -> None:
        # A user's 403 from /admin/system; the 412 of the conflict test and the 422 of the
        # refused times, shown on the page.
        url = msg.location.get("url", "")
        if (
            msg.type == "error"
            and not url.endswith(("/admin/system", "/reprocess"))  # the question's 409
            and "/ws/" not in msg.text
            and "412" not in msg.text
            and not ("/segments/" in url and "422" in msg.text)
        ):
            errors.append(f"console: {msg.text}")

    tab.on("console", console)
    await tab.goto(f"{gateway}/app/")
    await tab.fill("#dev-user", USER)
    await tab.click("form button[type=submit]")
    await tab.wait_for_selector("#nav:not([hidden])")
    await tab.evaluate("(h) => { location.hash = h; }", f"#/jobs/{job_id}")
    await tab.wait_for_selector("li.segment >> nth=3")
    await tab.wait_for_function("() => document.getElementById('player').readyState >= 1")
    yield tab
    await context.close()
    assert not errors, errors


def text_field(n: int) -> str:
    return f"li.segment >> nth={n} >> span.text"


async def texts(page: Any) -> list[str]:
    return await page.eval_on_selector_all(  # type: ignore[no-any-return]
        "li.segment span.text", "els => els.map(e => e.textContent)"
    )


async def transcript(gateway: str, auth: dict[str, str], job_id: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        response = await client.get(f"/jobs/{job_id}/transcript", headers=auth)
    assert response.status_code == 200, response.text
    return response


async def saved(page: Any, revision: int) -> None:
    """Wait until the page says every change is saved, at that revision (the Save button is
    disabled while a save is under way too)."""
    await page.wait_for_function(
        "(r) => document.querySelector('.editor-status').textContent === `Saved (revision ${r})`",
        arg=revision,
    )
    assert await page.is_disabled("#save-edits")


async def put_caret(page: Any, n: int, before: str) -> None:
    """The caret in segment n's text, just before `before`."""
    await page.click(text_field(n))
    await page.eval_on_selector(
        text_field(n),
        """(el, before) => {
            const node = el.firstChild;
            const range = document.createRange();
            range.setStart(node, node.textContent.indexOf(before));
            range.collapse(true);
            getSelection().removeAllRanges();
            getSelection().addRange(range);
        }""",
        before,
    )


async def test_correct_a_word_and_save_with_ctrl_s(
    page: Any, gateway: str, auth: dict[str, str], job_id: str
):
    corrected = "Engineers mount them on rooftops to power homes during the day."
    await page.fill(text_field(1), corrected)
    await page.wait_for_selector("li.segment.changed >> nth=0")
    assert await page.is_enabled("#save-edits")
    await page.press(text_field(1), "Control+s")
    await saved(page, 1)
    assert await page.locator("li.segment.changed").count() == 0
    assert (await texts(page))[1] == corrected

    shown = (await transcript(gateway, auth, job_id)).json()
    assert shown["revision"] == 1
    await page.reload()
    await page.wait_for_selector("li.segment >> nth=3")
    assert (await texts(page))[1] == corrected
    assert [s["text"].strip() for s in shown["segments"]][:2] == [
        "Solar panels turn sunlight into electricity.",
        corrected,
    ]


async def test_split_at_the_cursor_with_ctrl_enter(
    page: Any, gateway: str, auth: dict[str, str], job_id: str
):
    await put_caret(page, 2, "one egg")
    await page.keyboard.press("Control+Enter")
    await page.wait_for_selector("li.segment >> nth=4")
    assert (await texts(page))[2:4] == [
        "The recipe needs two cups of flour,",
        "one egg and a pinch of salt.",
    ]
    # The caret goes on in the new segment, at its start.
    assert await page.evaluate("document.activeElement.dataset.index") == "3"

    segments = (await transcript(gateway, auth, job_id)).json()["segments"]
    assert [s["text"].strip() for s in segments[2:4]] == [
        "The recipe needs two cups of flour,",
        "one egg and a pinch of salt.",
    ]
    assert 7.6 < segments[3]["start"] < 11.6
    assert segments[2]["end"] <= segments[3]["start"]


async def test_join_lines_with_backspace_delete_and_the_button(
    page: Any, gateway: str, auth: dict[str, str], job_id: str
):
    first, second, third, fourth = (text.strip() for _, _, text in SEGMENTS)
    # Backspace at a line's start joins it to the one before; the caret stays where they meet.
    await put_caret(page, 1, "Engineers")
    await page.keyboard.press("Backspace")
    await page.wait_for_function("() => document.querySelectorAll('li.segment').length === 3")
    assert (await texts(page))[0] == f"{first} {second}"
    assert await page.evaluate("document.activeElement.dataset.index") == "0"
    assert await page.evaluate("getSelection().focusOffset") == len(first) + 1

    # Delete at a line's end joins the next one to it; unsaved text is saved first.
    await page.click(text_field(1))
    await page.keyboard.press("End")
    await page.keyboard.type(" Really.")
    await page.keyboard.press("Delete")
    await page.wait_for_function("() => document.querySelectorAll('li.segment').length === 2")
    assert (await texts(page))[1] == f"{third} Really. {fourth}"
    await saved(page, 3)  # join, text, join

    # The button joins the line last focused and the next one; the last line has no next.
    await page.click(text_field(0))
    await page.click("#merge-next")
    await saved(page, 4)
    assert await page.is_disabled("#merge-next")

    shown = (await transcript(gateway, auth, job_id)).json()
    assert [(s["start"], s["end"]) for s in shown["segments"]] == [(0.0, 15.6)]
    assert shown["segments"][0]["text"].strip() == f"{first} {second} {third} Really. {fourth}"
    await page.click("#history summary")
    await page.wait_for_selector("li.revision[data-revision='4']")
    assert "segments merged" in (await page.text_content("li.revision[data-revision='4']") or "")


async def test_start_and_end_at_the_players_time(
    page: Any, gateway: str, auth: dict[str, str], job_id: str
):
    player = "document.getElementById('player')"
    await page.click(text_field(1))
    await page.evaluate(f"{player}.currentTime = 4")
    await page.keyboard.press("Control+BracketLeft")
    await saved(page, 1)
    await page.evaluate(f"{player}.currentTime = 7.25")
    await page.click("#end-here")  # acts on the line last focused
    await saved(page, 2)
    segment = (await transcript(gateway, auth, job_id)).json()["segments"][1]
    assert (segment["start"], segment["end"]) == (4.0, 7.25)
    assert await page.text_content("li.segment >> nth=1 >> button.ts") == "0:04"
    assert await page.get_attribute("li.segment >> nth=1 >> button.ts", "title") == "0:04.0–0:07.2"

    # An end before the line's start is refused, said on the page, and changes nothing.
    await page.evaluate(f"{player}.currentTime = 2")
    await page.click(text_field(1))
    await page.keyboard.press("Control+BracketRight")
    error = await page.wait_for_selector(".editor-error:not([hidden])")
    assert "times must satisfy" in (await error.text_content() or "")
    shown = (await transcript(gateway, auth, job_id)).json()
    assert shown["revision"] == 2
    assert (shown["segments"][1]["start"], shown["segments"][1]["end"]) == (4.0, 7.25)


async def test_a_conflict_keeps_the_unsaved_text_and_reloads(
    page: Any, gateway: str, auth: dict[str, str], job_id: str
):
    # Someone else corrects the first segment behind the page's back.
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:
        etag = (await client.get(f"/jobs/{job_id}/transcript", headers=auth)).headers["ETag"]
        other = await client.patch(
            f"/jobs/{job_id}/segments/0",
            headers={**auth, "If-Match": etag},
            json={"text": "Solar cells turn sunlight into electricity."},
        )
    assert other.status_code == 200, other.text

    mine = "Bake the loaf in a hot oven for forty minutes."
    await page.fill(text_field(3), mine)
    await page.keyboard.press("Control+s")
    conflict = await page.wait_for_selector(".conflict:not([hidden])")
    assert "changed elsewhere" in (await conflict.text_content() or "")
    assert (await texts(page))[3] == mine  # still on the page, still marked
    assert await page.locator("li.segment.changed").count() == 1

    await page.click("#reload-transcript")
    await page.wait_for_function(
        "() => document.querySelector('li.segment span.text').textContent.startsWith('Solar cells')"
    )
    assert (await texts(page))[3] == "Bake the bread in a hot oven for forty minutes."
    assert await page.text_content(".conflict .kept-text") == mine
    await page.click(".conflict .kept button")
    assert (await texts(page))[3] == mine
    await page.keyboard.press("Control+s")
    await saved(page, 2)

    segments = (await transcript(gateway, auth, job_id)).json()["segments"]
    assert [segments[0]["text"].strip(), segments[3]["text"].strip()] == [
        "Solar cells turn sunlight into electricity.",
        mine,
    ]


async def test_revert_from_the_history_panel(
    page: Any, gateway: str, auth: dict[str, str], job_id: str
):
    await page.fill(text_field(0), "Solar panels turn daylight into electricity.")
    await page.click("#save-edits")
    await saved(page, 1)
    await page.click("#history summary")
    entry = await page.wait_for_selector("li.revision[data-revision='1']")
    said = await entry.text_content() or ""
    assert USER in said, said
    assert "text corrected" in said, said
    await page.click("li.revision[data-revision='0'] button.revert")
    await page.wait_for_function(
        "() => document.querySelector('li.segment span.text').textContent.includes('sunlight')"
    )
    await page.wait_for_selector("li.revision[data-revision='2']")
    assert "revert" in (await page.text_content("li.revision[data-revision='2']") or "")

    shown = (await transcript(gateway, auth, job_id)).json()
    assert shown["revision"] == 2
    assert shown["segments"][0]["text"].strip() == "Solar panels turn sunlight into electricity."


async def test_two_speakers_lines_of_one_segment_are_saved_as_one_text(
    page: Any, gateway: str, auth: dict[str, str], db: Any
):
    """With speakers, a stored segment two speakers share shows as two lines: a change in
    one marks both, and the segment is saved as their texts joined."""
    job = await finished_job(
        gateway,
        auth,
        db,
        [
            (0.0, 3.2, " Solar panels turn sunlight into electricity."),
            (3.2, 7.6, " Hi Bob. How are you?"),
        ],
        [(0.0, 3.2, "SPEAKER_01"), (3.2, 4.6, "SPEAKER_02"), (4.7, 7.6, "SPEAKER_01")],
    )
    await page.evaluate("(h) => { location.hash = h; }", f"#/jobs/{job}")
    await page.wait_for_selector("li.segment[data-speaker=SPEAKER_02]")
    assert await texts(page) == [
        "Solar panels turn sunlight into electricity.",
        "Hi Bob.",
        "How are you?",
    ]
    await page.fill(text_field(2), "How have you been?")
    assert await page.locator("li.segment.changed").count() == 2
    await page.keyboard.press("Control+s")
    await saved(page, 1)

    segments = (await transcript(gateway, auth, job)).json()["segments"]
    said = " ".join(s["text"].strip() for s in segments if s["index"] == 1)
    assert said == "Hi Bob. How have you been?"
    assert " ".join((await texts(page))[1:]) == said


async def test_unsaved_marker_guards_and_player_keys(page: Any):
    # Keys: Escape plays and pauses, Ctrl/Alt+← jumps back 5 s, wherever the focus is.
    await page.click(text_field(0))
    await page.keyboard.press("Escape")
    await page.wait_for_function("() => !document.getElementById('player').paused")
    await page.keyboard.press("Escape")
    await page.wait_for_function("() => document.getElementById('player').paused")
    await page.evaluate("document.getElementById('player').currentTime = 12")
    await page.keyboard.press("Control+ArrowLeft")
    assert abs(await page.evaluate("document.getElementById('player').currentTime") - 7) < 0.3
    await page.keyboard.press("Alt+ArrowLeft")  # not the browser's Back
    assert abs(await page.evaluate("document.getElementById('player').currentTime") - 2) < 0.3
    assert "#/jobs/" in page.url
    await page.select_option("#playback-rate", "1.5")
    assert await page.evaluate("document.getElementById('player').playbackRate") == 1.5

    # Clicking a time plays from there; the segment spoken is highlighted.
    await page.click("li.segment >> nth=2 >> button.ts")
    await page.wait_for_selector("li.segment.current[data-start='7.6']")
    await page.keyboard.press("Escape")

    # A change marks its segment and arms the guards.
    await page.click(text_field(1))
    await page.keyboard.press("End")
    await page.keyboard.type(" Really")
    await page.wait_for_selector("li.segment.changed .badge.unsaved:not([hidden])")
    assert await page.text_content(".editor-status") == "1 segment not saved"
    # Enter adds no line break.
    await page.keyboard.press("Enter")
    assert "\n" not in (await texts(page))[1]
    warned = await page.evaluate(
        "() => { const e = new Event('beforeunload', { cancelable: true });"
        " window.dispatchEvent(e); return e.defaultPrevented; }"
    )
    assert warned is True

    # Leaving the job view asks first; staying keeps the text.
    asked: list[str] = []

    async def stay(dialog: Any) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    page.once("dialog", stay)
    await page.click("nav a[data-route=jobs]")
    for _ in range(100):  # the dialog's handler runs beside the click
        if asked:
            break
        await page.wait_for_timeout(100)
    assert asked
    assert "unsaved" in asked[0]
    assert "#/jobs/" in page.url
    assert (await texts(page))[1].endswith("during the day. Really")

    # Typing the text back as it was clears the marker.
    await page.click(text_field(1))
    await page.keyboard.press("End")
    for _ in range(len(" Really")):
        await page.keyboard.press("Backspace")
    await page.wait_for_selector("li.segment.changed", state="detached")
    assert (
        await page.evaluate(
            "() => { const e = new Event('beforeunload', { cancelable: true });"
            " window.dispatchEvent(e); return e.defaultPrevented; }"
        )
        is False
    )
    await page.click("nav a[data-route=jobs]")
    await page.wait_for_selector("ul.jobs")


async def test_transcribing_a_corrected_job_again_asks_first(
    page: Any, gateway: str, auth: dict[str, str], job_id: str, db: Any
):
    await page.fill(text_field(0), "Solar panels turn daylight into electricity.")
    await page.press(text_field(0), "Control+s")
    await saved(page, 1)
    # The edit's run of chunk and embed (no chunker here), marked done as the stages would.
    for stage in ("chunk", "embed"):
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state, progress, generation, started_at,"
            " finished_at) VALUES ($1, $2, 'done', 1,"
            " (SELECT generation FROM jobs WHERE id = $1), now(), now())",
            uuid.UUID(job_id),
            stage,
        )
    await page.reload()
    await page.wait_for_selector("select[aria-label^='Reprocess']")
    await page.select_option("select[aria-label^='Reprocess']", "transcribe")
    asked: list[str] = []

    async def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    page.once("dialog", dismiss)
    await page.click("button:has-text('Reprocess')")
    for _ in range(100):
        if asked:
            break
        await page.wait_for_timeout(50)
    assert asked, "no question before discarding the corrections"
    assert "discard the corrections" in asked[0]
    kept = (await transcript(gateway, auth, job_id)).json()
    assert kept["revision"] == 1

    page.once("dialog", lambda dialog: dialog.accept())
    await page.click("button:has-text('Reprocess')")
    for _ in range(200):
        if not await db.fetchval(
            "SELECT count(*) FROM transcript_revisions WHERE job_id = $1", uuid.UUID(job_id)
        ):
            break
        await page.wait_for_timeout(50)
    assert not await db.fetchval(
        "SELECT count(*) FROM transcript_revisions WHERE job_id = $1", uuid.UUID(job_id)
    )
    # The new run transcribes again: its transcribe stage has not run yet.
    assert not await db.fetchval(
        "SELECT count(*) FROM job_stages WHERE job_id = $1 AND stage = 'transcribe'",
        uuid.UUID(job_id),
    )
