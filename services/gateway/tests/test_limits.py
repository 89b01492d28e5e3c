"""Limits on what a request may ask for: allowed Whisper models (L7), audio duration and
containers (M2), expensive operations (L6). Against the real Postgres and broker."""

from __future__ import annotations

import contextlib
import io
import uuid
from pathlib import Path

import av
import numpy as np
import pytest
from mxw_shared.audio import AudioTooLong, ContainerNotAllowed, probe_audio
from mxw_shared.contracts import WHISPER_MODELS

from .test_reprocess import finish_stages

USER = "lena-limits"
MAX_AUDIO_S = 60


QUOTA = 80_000  # above what USER stores here (~40 KB), below short + solar (19 + 75 KB)
SOLAR = (
    Path(__file__).resolve().parents[3] / "tests/fixtures/audio/solar_and_bread.ogg"
).read_bytes()


@pytest.fixture(scope="module")
async def client(start_gateway):
    async with start_gateway(
        max_audio_seconds=MAX_AUDIO_S,
        # Rates too low to refill during a test: only the burst counts.
        rate_limits={"reprocess": (0.01, 2), "webhook_tests": (0.01, 2)},
        storage_quota_bytes=QUOTA,
        openai_wait_s=300.0,
        openai_max_waits_per_user=1,
    ) as c:
        yield c


def silent_flac(seconds: int, *, declare_duration: bool = True, rate: int = 8000) -> bytes:
    """FLAC silence: a few hundred bytes a second. Without `declare_duration` the STREAMINFO
    sample count is 0 ("unknown"), so only decoding tells the length."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        step = rate * 10
        for start in range(0, rate * seconds, step):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, step), dtype=np.int16), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = bytearray(buffer.getvalue())
    if not declare_duration:
        # "fLaC", a 4-byte block header, then STREAMINFO: the 36-bit total sample count
        # starts in the low nibble of its byte 13.
        data[8 + 13] &= 0xF0
        data[8 + 14 : 8 + 18] = b"\0\0\0\0"
    return bytes(data)


async def upload(client, headers, data: bytes, filename: str = "a.flac"):
    return await client.post(
        "/jobs",
        headers=headers,
        params={"force": "true"},
        files={"file": (filename, data, "application/octet-stream")},
    )


@pytest.fixture(scope="module")
def headers(token) -> dict[str, str]:
    return token(USER)


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict = response.json()
    assert body["status"] == status
    return body


async def job_count(db) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = $1", USER)
    return count


@pytest.mark.parametrize(
    "model", ["/models/whisper-large", "Systran/faster-whisper-large-v3", "large-v3", "../tiny.en"]
)
async def test_l7_upload_naming_a_model_outside_the_allow_list_is_422(
    client, headers, short_ogg, db, model
):
    jobs = await job_count(db)
    response = await client.post(
        "/jobs",
        headers=headers,
        params={"force": "true"},
        files={"file": ("a.ogg", short_ogg, "audio/ogg")},
        data={"model": model},
    )
    body = assert_problem(response, 422)
    assert "is not available" in body["detail"]
    assert body["allowed_models"] == list(WHISPER_MODELS)
    assert await job_count(db) == jobs


async def test_l7_allowed_model_is_accepted(client, headers, short_ogg):
    response = await client.post(
        "/jobs",
        headers=headers,
        params={"force": "true"},
        files={"file": ("a.ogg", short_ogg, "audio/ogg")},
        data={"model": "base"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["options"]["model"] == "base"


async def test_l7_from_url_and_reprocess_check_the_model_too(client, headers, upload_short, db):
    response = await client.post(
        "/jobs/from-url",
        headers=headers,
        json={"url": "http://127.0.0.1:9/a.ogg", "options": {"model": "/etc"}},
    )
    assert "is not available" in assert_problem(response, 422)["detail"]

    uploaded = await upload_short(client, headers)
    job_id = uuid.UUID(uploaded.json()["id"])
    await finish_stages(db, job_id, states={"transcribe": "done", "chunk": "done", "embed": "done"})
    response = await client.post(
        f"/jobs/{job_id}/reprocess",
        headers=headers,
        json={"from": "transcribe", "options": {"model": "/home/someone/model"}},
    )
    assert "is not available" in assert_problem(response, 422)["detail"]


async def test_m2_audio_longer_than_the_limit_is_refused_at_upload(client, headers, db):
    jobs = await job_count(db)
    accepted = await upload(client, headers, silent_flac(MAX_AUDIO_S - 10))
    assert accepted.status_code == 202, accepted.text
    data = silent_flac(MAX_AUDIO_S + 30)
    assert len(data) < 30_000
    body = assert_problem(await upload(client, headers, data), 422)
    assert body["title"] == "Audio too long"
    assert body["max_audio_seconds"] == MAX_AUDIO_S
    assert await job_count(db) == jobs + 1


async def test_l6_m2_without_a_duration_header_the_probe_stops_decoding_at_the_limit(
    client, headers, db, tmp_path: Path
):
    # Silence that declares no length (5 x the limit, under the upload limit): the probe used
    # to decode all of it, whatever its length.
    unknown = tmp_path / "unknown.flac"
    unknown.write_bytes(silent_flac(MAX_AUDIO_S * 5, declare_duration=False))
    with av.open(str(unknown)) as container:
        assert container.duration is None
        assert container.streams.audio[0].duration is None
    with pytest.raises(AudioTooLong):
        probe_audio(unknown, MAX_AUDIO_S)
    body = assert_problem(await upload(client, headers, unknown.read_bytes()), 422)
    assert body["title"] == "Audio too long"
    short = silent_flac(20, declare_duration=False)
    accepted = await upload(client, headers, short)
    assert accepted.status_code == 202, accepted.text


async def test_m2_an_ffconcat_list_is_refused(client, headers, short_ogg, db):
    first = await upload(client, headers, short_ogg, "short.ogg")
    sha = first.json()["sha256"]
    jobs = await job_count(db)
    # A list naming a blob of the store (the same directory as this upload's) 100 times.
    listing = ("ffconcat version 1.0\n" + f"file {sha}\n" * 100).encode()
    body = assert_problem(await upload(client, headers, listing, "list.ffconcat"), 422)
    assert body["title"] == "Unsupported container"
    assert await job_count(db) == jobs


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("list", "ffconcat version 1.0\nfile a.ogg\n"),
        ("list.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\na.ogg\n#EXT-X-ENDLIST\n"),
    ],
)
def test_m2_lists_and_playlists_are_not_opened(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ContainerNotAllowed):
        probe_audio(path, 3600)


@pytest.mark.parametrize(
    "path", [f"/jobs/{uuid.UUID(int=7)}/reprocess", f"/webhooks/{uuid.UUID(int=7)}/test"]
)
async def test_l6_reprocess_and_webhook_tests_are_rate_limited(client, token, path):
    headers = token(f"rate-{path.split('/')[1]}")
    body = {"from": "transcribe"} if "reprocess" in path else None
    statuses = [(await client.post(path, headers=headers, json=body)).status_code for _ in range(2)]
    assert statuses == [404, 404]  # the budget is spent before the route looks the id up
    limited = await client.post(path, headers=headers, json=body)
    assert_problem(limited, 429)
    assert int(limited.headers["Retry-After"]) >= 1
    other = await client.post(path, headers=token("rate-someone-else"), json=body)
    assert other.status_code == 404


async def test_l6_search_offset_beyond_the_maximum_is_422(client, headers):
    from mxw_gateway.search.schemas import MAX_OFFSET

    beyond = MAX_OFFSET + 1
    for response in (
        await client.get("/search", params={"q": "x", "offset": beyond}, headers=headers),
        await client.post("/search", json={"q": "x", "offset": beyond}, headers=headers),
        await client.get(
            f"/search/similar/{uuid.UUID(int=1)}", params={"offset": beyond}, headers=headers
        ),
    ):
        assert_problem(response, 422)


async def test_l6_storage_quota_refuses_an_upload_past_it(client, token, short_ogg, db):
    headers = token("quinn-quota")
    assert (await upload(client, headers, short_ogg, "short.ogg")).status_code == 202
    refused = await upload(client, headers, SOLAR, "solar.ogg")
    body = assert_problem(refused, 413)
    assert body["title"] == "Storage quota exceeded"
    assert body["quota_bytes"] == QUOTA
    assert body["used_bytes"] == len(short_ogg)
    count = await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'quinn-quota'")
    assert count == 1
    # The same content again takes no more space.
    assert (await upload(client, headers, short_ogg, "again.ogg")).status_code == 202


async def test_l6_openai_requests_wait_only_up_to_the_per_user_limit(
    client, token, short_ogg, wait_for
):
    import asyncio

    headers = token("olive-openai")
    form = {"model": "tiny.en", "response_format": "json"}

    async def transcribe(name: str):
        return await client.post(
            "/v1/audio/transcriptions",
            headers=headers,
            files={"file": (name, short_ogg, "audio/ogg")},
            data=form,
        )

    # No transcriber runs here: the first request waits (up to openai_wait_s, 300 s).
    waiting = asyncio.create_task(transcribe("first.ogg"))
    try:
        await wait_for("SELECT count(*) FROM jobs WHERE owner_id = 'olive-openai'")
        second = await transcribe("second.ogg")
        assert second.status_code == 202, second.text
        assert second.json()["state"] == "queued"
        assert not waiting.done()
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
