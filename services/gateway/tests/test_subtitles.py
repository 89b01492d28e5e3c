from dataclasses import dataclass

import pytest
from mxw_gateway.jobs.subtitles import clock, to_srt, to_text, to_vtt, vtt_voice


@dataclass
class Cue:
    start: float
    end: float
    text: str


CUES = [
    Cue(0.0, 3.2, " Solar panels turn sunlight into electricity."),
    Cue(3.2, 3661.5, "Bake it."),
]


@pytest.mark.parametrize(
    ("seconds", "mark", "expected"),
    [
        (0, ",", "00:00:00,000"),
        (3.2, ",", "00:00:03,200"),
        (3661.5, ".", "01:01:01.500"),
        (59.9996, ".", "00:01:00.000"),
        (-1, ",", "00:00:00,000"),
    ],
)
def test_clock(seconds, mark, expected):
    assert clock(seconds, mark) == expected


def test_srt_numbers_cues_from_one_with_comma_milliseconds():
    assert to_srt(CUES) == (
        "1\n00:00:00,000 --> 00:00:03,200\nSolar panels turn sunlight into electricity.\n\n"
        "2\n00:00:03,200 --> 01:01:01,500\nBake it.\n"
    )


def test_vtt_has_header_and_dot_milliseconds():
    assert to_vtt(CUES) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:03.200\nSolar panels turn sunlight into electricity.\n\n"
        "00:00:03.200 --> 01:01:01.500\nBake it.\n"
    )


def test_cue_text_cannot_break_the_format():
    nasty = [Cue(0, 1, "line one\n\nline two --> three"), Cue(1, 2, "   ")]
    srt = to_srt(nasty)
    assert srt == "1\n00:00:00,000 --> 00:00:01,000\nline one\nline two -> three\n"
    assert "\n\n\n" not in to_vtt(nasty)


def test_text_is_one_line_per_segment_or_the_full_text():
    assert to_text(CUES, "ignored") == "Solar panels turn sunlight into electricity.\nBake it.\n"
    assert to_text([], " all of it ") == "all of it\n"


@dataclass
class Spoken:
    start: float
    end: float
    text: str
    who: str | None


SPOKEN = [
    Spoken(0, 1, "Hi.", "Ann"),
    Spoken(1, 2, "How are you?", "Ann"),
    Spoken(2, 3, "  ", "Bo"),  # empty: no cue, and no paragraph of its own
    Spoken(3, 4, "Fine.", "Bo & <Co>"),
    Spoken(4, 5, "Noise.", None),
]


def who(cue: Spoken) -> str | None:
    return cue.who


def test_voices_name_who_speaks_in_every_format():
    assert to_text(SPOKEN, "ignored", who) == (
        "Ann: Hi. How are you?\n\nBo & <Co>: Fine.\n\nNoise.\n"
    )
    srt = to_srt(SPOKEN, who)
    assert "\nAnn: How are you?\n" in srt
    assert "\nBo & <Co>: Fine.\n" in srt
    assert "\nNoise.\n" in srt
    vtt = to_vtt(SPOKEN, who)
    assert "\n<v Ann>Hi.\n" in vtt
    assert "\n<v Bo &amp; &lt;Co&gt;>Fine.\n" in vtt
    assert "\nNoise.\n" in vtt


def test_a_voice_annotation_stays_on_its_line():
    assert vtt_voice(" Ann\u2028 Lee ") == "Ann Lee"
