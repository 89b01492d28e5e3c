"""The web page in a real browser against the real stack (`mxw up`): sign in, upload
generated speech, watch live progress reach done without a reload, seek the player from the
transcript, play a search result from its chunk's second, and keep another user out.

With MXW_SCREENSHOTS=<dir> the same walk saves a screenshot of every page there
(scripts/screenshots.py refreshes docs/screenshots/ this way)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
AUDIO = FIXTURES / "solar_and_bread.ogg"  # espeak-ng speech, 15.7 s (see make_audio.sh)
SCREENSHOTS = Path(os.environ["MXW_SCREENSHOTS"]) if os.environ.get("MXW_SCREENSHOTS") else None
PIPELINE_TIMEOUT_MS = 240_000

PLAYER_STATE = (
    "() => { const a = document.querySelector('#player'); "
    "return {t: a.currentTime, paused: a.paused}; }"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, launch_stack: Any) -> Iterator[Any]:
    # Chunks of 2-20 s: the 15.7 s fixture splits into its two topics (solar, bread), so the
    # bread chunk starts well after 0 and playing it from its second is a real seek.
    chunk_bounds = {"MXW_MIN_S": "2", "MXW_MAX_S": "20"}
    with launch_stack(tmp_path_factory.mktemp("web-stack"), env=chunk_bounds) as running:
        yield running


class Tab:
    """A signed-in browser tab that records what would betray a broken page."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.errors: list[str] = []
        self.frames: list[dict[str, Any]] = []
        self.sockets: list[Any] = []  # every WebSocket the page opened, in order
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._on_console)
        page.on("websocket", self._on_websocket)

    def _on_console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        # The page learns whether the user is an admin by asking /admin/system once; the
        # browser logs the 403 a user gets there. Everything else counts.
        if "403" in msg.text and msg.location.get("url", "").endswith("/admin/system"):
            return
        self.errors.append(f"console: {msg.text} ({msg.location.get('url')})")

    def _on_websocket(self, ws: Any) -> None:
        self.sockets.append(ws)

        def received(payload: str | bytes) -> None:
            self.frames.append(json.loads(payload))

        ws.on("framereceived", received)

    async def go(self, hash_route: str) -> None:
        """Navigate inside the page (a hash change: no reload)."""
        await self.page.evaluate("(h) => { location.hash = h; }", hash_route)

    async def shot(self, name: str) -> None:
        if SCREENSHOTS is not None:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await self.page.wait_for_timeout(300)  # let the toast and layout settle
            await self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Wait for a condition that no page selector expresses (sockets, routed frames)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def upload(stack: Any, user: str, fixture: str) -> str:
    """Start a job through the API, not the page: the page must learn of it by itself."""
    path = FIXTURES / fixture
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=60) as client:
        response = await client.post(
            "/jobs",
            headers=stack.auth(user),
            files={"file": (path.name, path.read_bytes(), "audio/ogg")},
            data={"language": "en"},
        )
    assert response.status_code in (200, 201, 202), response.text
    return str(response.json()["id"])


def feed_urls(tab: Tab) -> list[str]:
    return [ws.url for ws in tab.sockets if "/ws/jobs" in ws.url]


async def sign_in(
    browser: Any,
    stack: Any,
    user: str,
    admin: bool = False,
    viewport: dict[str, int] | None = None,
    **context: Any,
) -> Tab:
    ctx = await browser.new_context(viewport=viewport or {"width": 1100, "height": 850}, **context)
    page = await ctx.new_page()
    page.set_default_timeout(60_000)
    tab = Tab(page, stack.info.gateway_url)
    await page.goto(stack.info.gateway_url + "/")  # redirects to /app/
    await page.wait_for_selector("#dev-user")
    if user == "alice":
        await tab.shot("sign-in")
    await page.fill("#dev-user", user)
    if admin:
        await page.check("#dev-admin")
    await page.click("form button[type=submit]")
    await page.wait_for_selector("#nav:not([hidden])")
    assert await page.text_content("#who") == user
    return tab


@pytest.fixture(scope="module")
async def alice(browser: Any, stack: Any) -> AsyncIterator[Tab]:
    tab = await sign_in(browser, stack, "alice")
    yield tab
    await tab.page.context.close()


@pytest.fixture(scope="module")
async def done_job(alice: Tab) -> dict[str, Any]:
    """Upload through the page, then follow it live on My jobs until done."""
    page = alice.page
    await alice.go("#/upload")
    await page.wait_for_selector("#files", state="attached")
    await page.fill("#opt-language", "en")
    await page.set_input_files("#files", str(AUDIO))
    item = await page.wait_for_selector(".uploads li[data-job-id]")
    job_id = await item.get_attribute("data-job-id")
    assert job_id
    assert await page.eval_on_selector(".uploads progress", "p => p.value") == 1
    await alice.shot("upload")
    await page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    await page.click("text=Follow your jobs live")
    card = f'li.job[data-job-id="{job_id}"]'
    await page.wait_for_selector(card)
    started = time.monotonic()
    await page.wait_for_selector(f'{card}[data-state="done"]', timeout=PIPELINE_TIMEOUT_MS)
    return {"id": job_id, "seconds": time.monotonic() - started}


async def test_progress_reaches_done_live_over_the_websocket(alice: Tab, done_job: dict[str, Any]):
    page = alice.page
    assert await page.evaluate("window.__sameDocument === true"), "the page reloaded"
    card = f'li.job[data-job-id="{done_job["id"]}"]'
    assert await page.eval_on_selector(f"{card} progress", "p => p.value") == 1
    assert (await page.text_content(f"{card} [data-role=state]")) == "done"
    # Every stage is listed done with its own timing.
    stages = await page.eval_on_selector_all(
        f"{card} .stage", "els => els.map(e => [e.dataset.stage, e.textContent])"
    )
    assert [s for s, _ in stages] == ["transcribe", "chunk", "embed"]
    assert all(" done · " in text and text.endswith(" s") for _, text in stages), stages
    # The progress came over the notifier's WebSocket: its status events, in order, to done.
    mine = [f for f in alice.frames if f.get("job_id") == done_job["id"]]
    assert mine, "no status frame arrived over the WebSocket"
    assert mine[-1]["state"] == "done"
    assert mine[-1]["stage"] == "embed"
    progress = [f["progress"] for f in mine]
    assert progress == sorted(progress)
    assert progress[-1] == pytest.approx(1.0)
    await alice.shot("jobs")


async def test_clicking_a_timestamp_seeks_the_player(alice: Tab, done_job: dict[str, Any]):
    page = alice.page
    await page.click(f'li.job[data-job-id="{done_job["id"]}"] a.job-link')
    await page.wait_for_selector("li.segment >> nth=1")
    # The audio is fetched with the token; the player has it once it knows the duration.
    await page.wait_for_function("() => document.querySelector('#player').duration > 15")
    segments = await page.eval_on_selector_all(
        "li.segment", "els => els.map(e => [Number(e.dataset.start), Number(e.dataset.end)])"
    )
    assert len(segments) >= 2
    index = len(segments) - 1  # the last one: far from where the player starts
    start, _end = segments[index]
    assert start > 3
    await page.click(f"li.segment >> nth={index} >> button.ts")
    await page.wait_for_function(
        f"() => {{ const a = document.querySelector('#player'); "
        f"return !a.paused && a.currentTime >= {start} - 0.05; }}"
    )
    state = await page.evaluate(PLAYER_STATE)
    assert start - 0.05 <= state["t"] < start + 3, (state, start)
    # The segment being played is highlighted (and announced as current).
    await page.wait_for_selector(f"li.segment.current[data-start='{start}']")
    assert await page.get_attribute("li.segment.current", "aria-current") == "true"
    # Topics with their time ranges, and every download format.
    assert await page.locator("ol.chunks li.chunk").count() >= 1
    for fmt in ("TXT", "SRT", "VTT", "JSON"):
        assert await page.locator(f"button:has-text('Download {fmt}')").count() == 1
    async with page.expect_download() as download_info:
        await page.click("button:has-text('Download SRT')")
    download = await download_info.value
    assert "-->" in Path(await download.path()).read_text()
    await page.evaluate("document.querySelector('#player').pause()")
    await alice.shot("job")


async def test_search_paraphrase_plays_from_the_chunk_second(alice: Tab, done_job: dict[str, Any]):
    page = alice.page
    await page.click("nav a[data-route=search]")
    await page.fill("#q", "how long should I bake a loaf")
    await page.press("#q", "Enter")
    first = page.locator("li.hit").first
    await first.wait_for()
    assert await first.get_attribute("data-job-id") == done_job["id"]
    assert "bread" in (await first.locator(".text").text_content() or "").lower()
    start = float(await first.get_attribute("data-start") or "nan")
    assert start > 3  # the bread chunk follows the solar one
    await first.locator("button.play").click()
    await page.wait_for_function(
        f"() => {{ const a = document.querySelector('#player'); "
        f"return !a.paused && a.currentTime >= {start} - 0.05; }}"
    )
    state = await page.evaluate(PLAYER_STATE)
    assert start - 0.05 <= state["t"] < start + 3, (state, start)
    # From anywhere else in the audio, the button brings the player back to that second.
    await page.evaluate(
        "() => { const a = document.querySelector('#player'); a.pause(); a.currentTime = 1; }"
    )
    await first.locator("button.play").click()
    await page.wait_for_function(
        f"() => {{ const a = document.querySelector('#player'); "
        f"return !a.paused && a.currentTime >= {start} - 0.05; }}"
    )
    state = await page.evaluate(PLAYER_STATE)
    assert start - 0.05 <= state["t"] < start + 3, (state, start)
    await page.evaluate("document.querySelector('#player').pause()")
    await alice.shot("search")
    # Words only: the matched word comes back highlighted.
    await page.select_option("#mode", "text")
    await page.fill("#q", "oven")
    await page.press("#q", "Enter")
    await page.wait_for_selector("li.hit mark")
    assert (await page.text_content("li.hit >> nth=0 >> mark") or "").lower() == "oven"


async def test_another_user_cannot_see_the_job(browser: Any, stack: Any, done_job: dict[str, Any]):
    bob = await sign_in(browser, stack, "bob")
    page = bob.page
    try:
        await page.wait_for_selector("ul.jobs li")
        assert await page.locator(f'li.job[data-job-id="{done_job["id"]}"]').count() == 0
        assert "No jobs yet" in (await page.text_content("ul.jobs") or "")
        # The job's own page: the API answers 404, the page says so and shows nothing of it.
        await bob.go(f"#/jobs/{done_job['id']}")
        await page.wait_for_selector("h1:has-text('Job not found')")
        assert await page.locator("li.segment").count() == 0
        await bob.go("#/search")
        await page.fill("#q", "bread oven flour")
        await page.press("#q", "Enter")
        await page.wait_for_selector("ol.results li")
        assert await page.locator(f'li.hit[data-job-id="{done_job["id"]}"]').count() == 0
        # Nor may bob follow its progress: the notifier refuses him the feed.
        assert not [f for f in bob.frames if f.get("job_id") == done_job["id"]]
        # No admin page for a user.
        assert await page.is_hidden("#nav-admin")
    finally:
        await page.context.close()


async def test_admin_sees_users_all_jobs_and_dead_letters(
    browser: Any, stack: Any, done_job: dict[str, Any]
):
    admin = await sign_in(browser, stack, "root", admin=True)
    page = admin.page
    try:
        await page.wait_for_selector("#nav-admin:not([hidden])")
        await page.click("nav a[data-route=admin]")
        await page.wait_for_selector("tr[data-user=alice]")
        await page.wait_for_selector(f'li.job[data-job-id="{done_job["id"]}"]')
        assert "owner alice" in (
            await page.text_content(f'li.job[data-job-id="{done_job["id"]}"]') or ""
        )
        await page.wait_for_selector("ul.letters li")
        # Making bob an admin through the page changes his role in the API.
        await page.wait_for_selector("tr[data-user=bob]")
        await page.select_option("tr[data-user=bob] select", "admin")
        await page.wait_for_selector("#toast.shown")
        async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=30) as client:
            users = (
                await client.get("/admin/users", headers=stack.auth("root", admin=True))
            ).json()
        assert {u["id"]: u["role"] for u in users}["bob"] == "admin"
        await admin.shot("admin")
        assert not admin.errors, admin.errors
    finally:
        await page.context.close()


async def test_dropping_several_files_uploads_each(alice: Tab, done_job: dict[str, Any]) -> None:
    page = alice.page
    await alice.go("#/upload")
    await page.wait_for_selector(".dropzone")
    files = [
        {"name": name, "data": base64.b64encode((FIXTURES / name).read_bytes()).decode()}
        for name in ("short_en.ogg", "kurz_de.ogg")
    ]
    # A drop as the browser delivers it: a DataTransfer holding File objects.
    await page.evaluate(
        """(files) => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, { type: "audio/ogg" }));
            }
            const zone = document.querySelector(".dropzone");
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
        }""",
        files,
    )
    for f in files:
        item = page.locator(f'.uploads li[data-file="{f["name"]}"][data-job-id]')
        await item.wait_for()
        assert await item.locator("progress").evaluate("p => p.value") == 1
    ids = await page.eval_on_selector_all(
        ".uploads li[data-job-id]", "els => els.map(e => e.dataset.jobId)"
    )
    assert len(set(ids)) == 2
    assert done_job["id"] not in ids


async def test_the_jobs_list_follows_every_job_on_one_socket(browser: Any, stack: Any) -> None:
    dave = await sign_in(browser, stack, "dave")
    page = dave.page
    try:
        await page.wait_for_selector("ul.jobs li.empty")
        await until(lambda: len(dave.sockets) == 1, "the jobs feed")
        # Two jobs at once, started elsewhere: the page hears of them on its socket alone and
        # fetches the list for the unknown jobs.
        ids = [await upload(stack, "dave", f) for f in ("short_en.ogg", "solar_and_bread.ogg")]
        for job_id in ids:
            await page.wait_for_selector(f'li.job[data-job-id="{job_id}"]')
        for job_id in ids:
            await page.wait_for_selector(
                f'li.job[data-job-id="{job_id}"][data-state="done"]', timeout=PIPELINE_TIMEOUT_MS
            )
            card = f'li.job[data-job-id="{job_id}"]'
            assert await page.eval_on_selector(f"{card} progress", "p => p.value") == 1
            assert (await page.text_content(f"{card} [data-role=state]")) == "done"
            # Its statuses came in seq order, none twice, ending with done.
            mine = [f for f in dave.frames if f["job_id"] == job_id]
            assert mine, f"no status of {job_id} arrived"
            assert mine[-1]["state"] == "done", mine
            seqs = [f["seq"] for f in mine]
            assert seqs == sorted(set(seqs)), seqs
        # All of it over ONE WebSocket, to /ws/jobs: none per job, no second one.
        assert feed_urls(dave) == [ws.url for ws in dave.sockets]
        assert len(dave.sockets) == 1, feed_urls(dave)
        url = urlsplit(dave.sockets[0].url)
        assert url.path == "/ws/jobs"
        assert "all" not in parse_qs(url.query)
        # Leaving the list closes it.
        assert not dave.sockets[0].is_closed()
        await dave.go("#/search")
        await until(lambda: dave.sockets[0].is_closed(), "the feed to close")
        assert len(dave.sockets) == 1
        assert not dave.errors, dave.errors
    finally:
        await page.context.close()


async def test_a_dropped_feed_resumes_where_it_left_off(browser: Any, stack: Any) -> None:
    frank = await sign_in(browser, stack, "frank")
    page = frank.page
    urls: list[str] = []
    delivered: list[dict[str, Any]] = []
    watched: dict[str, Any] = {"job": None, "cut_after": None}
    cuts: list[asyncio.Task[None]] = []

    async def cut(ws: Any, server: Any) -> None:
        # The notifier's own words for a client that fell behind: reconnect and resume.
        ws.on_close(lambda code, reason: None)
        server.on_close(lambda code, reason: None)
        await server.close()
        await ws.close(code=4408, reason="client too slow")

    def route(ws: Any) -> None:
        """Between the page and the real notifier: passes every frame on, and cuts the feed
        once, right after the page got a status of the running job."""
        urls.append(ws.url)
        server = ws.connect_to_server()
        cutting = False

        def forward(message: str | bytes) -> None:
            nonlocal cutting
            if cutting:  # the close is under way: the page must not get frames past the cut
                return
            frame = json.loads(message)
            delivered.append(frame)
            ws.send(message)
            if (
                watched["cut_after"] is None
                and frame["job_id"] == watched["job"]
                and frame["state"] not in ("done", "failed", "cancelled")
            ):
                watched["cut_after"] = frame["seq"]
                cutting = True
                cuts.append(asyncio.ensure_future(cut(ws, server)))

        server.on_message(forward)

    try:
        await page.wait_for_selector("ul.jobs li.empty")
        await frank.go("#/upload")  # the list's socket closes; the next one goes through route
        await until(lambda: all(ws.is_closed() for ws in frank.sockets), "the feed to close")
        await page.route_web_socket(lambda url: "/ws/jobs" in url, route)
        await frank.go("#/jobs")
        await page.wait_for_selector("ul.jobs li.empty")
        await until(lambda: len(urls) == 1, "the jobs feed")
        job_id = await upload(stack, "frank", "solar_and_bread.ogg")
        card = f'li.job[data-job-id="{job_id}"]'
        await page.wait_for_selector(card)
        watched["job"] = job_id
        await page.wait_for_selector(f'{card}[data-state="done"]', timeout=PIPELINE_TIMEOUT_MS)
        cut_after = watched["cut_after"]
        assert cut_after is not None, "the job finished before its feed could be cut"
        assert len(cuts) == 1
        assert cuts[0].done()
        assert cuts[0].exception() is None
        # One new socket, resuming the job from the last status the page had.
        assert len(urls) == 2, urls
        resume = parse_qs(urlsplit(urls[1]).query)["resume"][0].split(",")
        assert f"{job_id}:{cut_after}" in resume, resume
        # Across both sockets: each status once, in order, nothing missing after the cut.
        seqs = [f["seq"] for f in delivered if f["job_id"] == job_id]
        assert seqs == sorted(set(seqs)), seqs
        later = [s for s in seqs if s > cut_after]
        assert later, seqs
        assert later == list(range(cut_after + 1, later[-1] + 1)), seqs
        assert [f for f in delivered if f["job_id"] == job_id][-1]["state"] == "done"
        assert (await page.text_content(f"{card} [data-role=state]")) == "done"
        assert await page.is_hidden(".live-status")  # "reconnecting" is gone again
        assert not frank.errors, frank.errors
    finally:
        await page.context.close()


async def test_a_refused_feed_is_explained_and_not_reopened(browser: Any, stack: Any) -> None:
    # An administrator by the users table only: the API lets erin in as admin, but her token
    # carries no admin claim, so the notifier refuses her every job's feed (all=true: 4403).
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=30) as client:
        assert (await client.get("/jobs", headers=stack.auth("erin"))).status_code == 200
        promoted = await client.patch(
            "/admin/users/erin", headers=stack.auth("root", admin=True), json={"role": "admin"}
        )
        assert promoted.status_code == 200, promoted.text
    erin = await sign_in(browser, stack, "erin")
    page = erin.page
    try:
        await page.wait_for_selector("#nav-admin:not([hidden])")
        await page.click("nav a[data-route=admin]")
        notice = page.locator(".live-status.error")
        await notice.wait_for()
        assert "administrator role" in (await notice.text_content() or "")
        await page.wait_for_selector("ul.jobs li.job")  # the list itself is there
        refused = [u for u in feed_urls(erin) if "all=true" in u]
        assert len(refused) == 1, feed_urls(erin)
        # Not reopened: wait past the first retry's delay (at most 0.6 s) several times over.
        await page.wait_for_timeout(3000)
        assert [u for u in feed_urls(erin) if "all=true" in u] == refused
        assert not erin.errors, erin.errors
    finally:
        await page.context.close()


async def test_keyboard_only_on_a_phone_sized_screen(browser: Any, stack: Any) -> None:
    ctx = await browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = await ctx.new_page()
    page.set_default_timeout(60_000)
    phone = Tab(page, stack.info.gateway_url)
    try:
        await page.goto(stack.info.gateway_url + "/app/")
        # Sign in with the keyboard alone: the user field has focus, Enter submits.
        await page.wait_for_selector("#dev-user:focus")
        await page.keyboard.type("carol")
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#nav:not([hidden])")
        # Focus moved to the new content, and Tab walks on inside it.
        await page.wait_for_function("() => document.activeElement.id === 'main'")
        await page.wait_for_selector("ul.jobs li a")
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.closest('main') !== null")
        await phone.go("#/upload")
        await page.wait_for_selector(".dropzone")
        # Nothing wider than the screen: no sideways scrolling on a phone.
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await phone.shot("phone-upload")
        assert not phone.errors, phone.errors
    finally:
        await ctx.close()


async def test_the_walk_raised_no_script_error_or_csp_violation(alice: Tab) -> None:
    assert alice.frames, "alice's tab never used the live feed"
    assert not alice.errors, alice.errors
