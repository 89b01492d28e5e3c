"""Limits on what a request may ask for: allowed Whisper models (L7), audio duration and
containers (M2), expensive operations (L6). Against the real Postgres and broker."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import av
import numpy as np
import pytest
from mxw_shared.audio import AudioTooLong, ContainerNotAllowed, probe_audio

from .test_reprocess import finish_stages

USER = "lena-limits"
MAX_AUDIO_S = 60


@pytest.fixture(scope="module")
async def client(start_gateway):
    async with start_gateway(max_audio_seconds=MAX_AUDIO_S) as c:
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
    assert body["allowed_models"] == ["tiny.en", "base", "small"]
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
