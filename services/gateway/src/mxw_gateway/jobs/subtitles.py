"""Transcript renderings: plain text, SubRip (SRT) and WebVTT. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Cue(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def text(self) -> str: ...


def clock(seconds: float, decimal_mark: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (VTT), rounded to the millisecond."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_mark}{ms:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue in both formats, and "-->" would start a timing line.
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines).replace("-->", "->")


def to_srt(cues: Sequence[Cue]) -> str:
    blocks = []
    for number, cue in enumerate((c for c in cues if c.text.strip()), start=1):
        timing = f"{clock(cue.start, ',')} --> {clock(cue.end, ',')}"
        blocks.append(f"{number}\n{timing}\n{_cue_text(cue.text)}\n")
    return "\n".join(blocks)


def to_vtt(cues: Sequence[Cue]) -> str:
    blocks = ["WEBVTT\n"]
    for cue in cues:
        if cue.text.strip():
            timing = f"{clock(cue.start, '.')} --> {clock(cue.end, '.')}"
            blocks.append(f"{timing}\n{_cue_text(cue.text)}\n")
    return "\n".join(blocks)


def to_text(cues: Sequence[Cue], full_text: str) -> str:
    """One line per segment; the full text when there are no segments."""
    if cues:
        return "\n".join(c.text.strip() for c in cues) + "\n"
    return full_text.strip() + "\n"
