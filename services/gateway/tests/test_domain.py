"""Pure rules of the gateway, without I/O."""

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mxw_gateway.jobs.admission import parse_options
from mxw_gateway.jobs.domain import (
    RangeNotSatisfiable,
    decode_cursor,
    encode_cursor,
    parse_byte_range,
    sanitize_filename,
)
from mxw_shared.audio import NotAudio, probe_audio
from mxw_shared.problems import Problem

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "audio"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("talk.ogg", "talk.ogg"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\memo.wav", "memo.wav"),
        ("bad\x00na\x1bme\n.mp3", "badname.mp3"),
        ("   ", None),
        ("..", None),
        (None, None),
    ],
)
def test_sanitize_filename(raw, expected):
    assert sanitize_filename(raw) == expected


def test_sanitize_filename_caps_length_and_keeps_extension():
    name = sanitize_filename("a" * 500 + ".flac", max_chars=50)
    assert name is not None
    assert len(name) == 50
    assert name.endswith(".flac")


def test_probe_reads_real_audio():
    info = probe_audio(FIXTURES / "short_en.ogg", 3600)
    assert info.container == "ogg"
    assert info.content_type == "audio/ogg"
    assert info.codec == "vorbis"
    assert 2.0 < info.duration_s < 6.0


def test_probe_rejects_text(tmp_path):
    fake = tmp_path / "fake.wav"
    fake.write_text("this is not audio at all, just words in a file named .wav\n" * 20)
    with pytest.raises(NotAudio):
        probe_audio(fake, 3600)


def test_cursor_round_trip_and_garbage():
    at = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    job = uuid.uuid4()
    assert decode_cursor(encode_cursor(at, job)) == (at, job)
    with pytest.raises(ValueError, match="invalid cursor"):
        decode_cursor("not-a-cursor!")


def test_parse_options_validates_through_job_options():
    options = parse_options({"language": "DE", "task": "translate", "word_timestamps": "true"})
    assert options.language == "de"
    assert options.task == "translate"
    assert options.word_timestamps is True
    with pytest.raises(Problem) as bad:
        parse_options({"language": "english", "task": "dance"})
    assert bad.value.status == 422
    assert {e["loc"][-1] for e in bad.value.extra["errors"]} == {"language", "task"}
    with pytest.raises(Problem):
        parse_options({"temperature": "0.3"})


@pytest.mark.parametrize(
    ("header", "served"),
    [
        (None, None),
        ("bytes=0-99", (0, 100)),
        ("bytes=100-", (100, 1000)),
        ("bytes=-10", (990, 1000)),
        ("bytes=-5000", (0, 1000)),  # longer than the file: all of it
        ("bytes=900-5000", (900, 1000)),  # clipped at the end
        ("bytes=0-0", (0, 1)),
        ("bytes=0-9,20-29", None),  # several ranges: the whole file (allowed by RFC 9110)
        ("items=0-9", None),
        ("bytes=9-3", None),
        ("bytes=abc", None),
        ("bytes=a-b", None),
    ],
)
def test_byte_ranges(header: str | None, served: tuple[int, int] | None) -> None:
    assert parse_byte_range(header, 1000) == served


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_byte_ranges_past_the_end_are_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_byte_range(header, 1000)
