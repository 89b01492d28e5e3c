"""Uploads that are odd or hostile: each gets its documented answer and nothing is left
half-stored."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import av
import pytest


@pytest.fixture(scope="module")
def mp3(short_ogg) -> bytes:
    """The short fixture re-encoded as MP3 with PyAV."""
    out = io.BytesIO()
    with av.open(io.BytesIO(short_ogg)) as src, av.open(out, "w", format="mp3") as dst:
        stream = dst.add_stream("mp3", rate=16000)
        for frame in src.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    return out.getvalue()


def files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and "tmp" not in p.parts}


async def post(client, headers, name: str, data: bytes, **params):
    return await client.post(
        "/jobs", headers=headers, params=params, files={"file": (name, data, "audio/mpeg")}
    )


async def test_empty_and_header_only_files_are_415_and_leave_nothing(client, token, db, infra, mp3):
    headers = token("odd-uploader")
    root = infra.root / "gateway-blobs"
    before = files(root)
    jobs_before = await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'odd-uploader'")
    for name, data in (("empty.wav", b""), ("cut.mp3", mp3[:64])):
        response = await post(client, headers, name, data)
        assert response.status_code == 415, (name, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert files(root) == before
    assert (
        await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'odd-uploader'")
        == jobs_before
    )


async def test_mp3_cut_short_but_decodable_is_accepted(client, token, mp3):
    # What decodes is audio: the transcriber transcribes what is there.
    response = await post(client, token("odd-uploader"), "half.mp3", mp3[: len(mp3) // 2])
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("Grüße aus 東京.mp3", "Grüße aus 東京.mp3"),
        ("../../etc/passwd.mp3", "passwd.mp3"),
        ("..\\..\\windows\\evil.mp3", "evil.mp3"),
    ],
)
async def test_filenames_are_sanitised_and_blobs_stay_in_the_store(
    client, token, db, infra, mp3, given, stored
):
    response = await post(client, token("namer"), given, mp3, force="true")
    assert response.status_code == 202, response.text
    assert response.json()["filename"] == stored
    uri = await db.fetchval("SELECT audio_uri FROM jobs WHERE id = $1", response.json()["id"])
    assert uri.startswith((infra.root / "gateway-blobs").resolve().as_uri())


async def test_concurrent_identical_uploads_make_one_job_and_one_blob(client, token, db, mp3):
    headers = token("racer")
    data = mp3 + b"\x00" * 16  # bytes no other test uploads
    responses = await asyncio.gather(*(post(client, headers, "race.mp3", data) for _ in range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'racer'") == 1
    assert await db.fetchval("SELECT count(*) FROM blobs WHERE owner_id = 'racer'") == 1


async def test_control_characters_in_a_raw_filename_are_removed(client, token, mp3):
    # httpx escapes control characters itself, so this part is written by hand.
    boundary = b"mxwboundary"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="bad\x01na\x7fme\x1f.mp3"\r\n'
        b"Content-Type: audio/mpeg\r\n\r\n" + mp3 + b"\r\n--" + boundary + b"--\r\n"
    )
    response = await client.post(
        "/jobs",
        params={"force": "true"},
        content=body,
        headers={**token("namer"), "Content-Type": "multipart/form-data; boundary=mxwboundary"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["filename"] == "badname.mp3"
