"""The streaming multipart reader, fed bodies cut into arbitrary small pieces."""

import httpx
import pytest
from mxw_gateway.jobs.multipart import boundary_of, multipart_events, read_form
from mxw_shared.problems import Problem

AUDIO = bytes(range(256)) * 300 + b"\r\n--not-the-boundary\r\n"


def encoded_form(fields: dict[str, str], file_bytes: bytes | None) -> tuple[str, bytes]:
    files = {"file": ("clip.ogg", file_bytes, "audio/ogg")} if file_bytes is not None else None
    request = httpx.Request("POST", "http://x/jobs", data=fields, files=files)
    return request.headers["content-type"], request.read()


async def pieces(body: bytes, size: int):
    for i in range(0, len(body), size):
        yield body[i : i + size]


async def read(content_type: str, body: bytes, size: int, max_field_bytes: int = 1024):
    received: list[list[bytes]] = []

    async def store(chunks):
        parts = [c async for c in chunks]
        received.append(parts)
        return b"".join(parts)

    form = await read_form(
        multipart_events(boundary_of(content_type), pieces(body, size)),
        file_field="file",
        store_file=store,
        max_field_bytes=max_field_bytes,
    )
    return form.fields, form.file, form.filename, received


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
async def test_fields_and_file_survive_any_chunking(size):
    content_type, body = encoded_form({"language": "en", "task": "translate"}, AUDIO)
    fields, stored, filename, received = await read(content_type, body, size)
    assert fields == {"language": "en", "task": "translate"}
    assert stored == AUDIO
    assert filename == "clip.ogg"
    if size < len(AUDIO):
        assert len(received[0]) > 1  # handed over piece by piece, not as one buffer


async def test_reader_without_file_part_and_capped_fields():
    request = httpx.Request(
        "POST",
        "http://x/",
        data={"language": "en"},
        files={"notes": ("n.txt", b"hi", "text/plain")},
    )
    fields, stored, _, _ = await read(request.headers["content-type"], request.read(), 5)
    assert (fields, stored) == ({"language": "en", "notes": "hi"}, None)
    content_type, body = encoded_form({"initial_prompt": "x" * 5000}, AUDIO)
    with pytest.raises(Problem) as too_big:
        await read(content_type, body, 100)
    assert too_big.value.status == 413


async def test_not_multipart_and_truncated_bodies_are_problems():
    with pytest.raises(Problem) as wrong:
        boundary_of("application/json")
    assert wrong.value.status == 415
    content_type, body = encoded_form({"language": "en"}, AUDIO)
    with pytest.raises(Problem) as truncated:
        await read(content_type, body[: len(body) // 2], 1000)
    assert truncated.value.status == 422
