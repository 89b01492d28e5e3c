"""Transcript renderings: plain text, SubRip (SRT) and WebVTT. Pure functions.

`voice` names who says a cue (None: nobody known): SRT prefixes the name ("Alice: …"),
WebVTT puts the cue in a voice span (<v Alice>…) and plain text starts a paragraph with the
name whenever the speaker changes. Without voices each renders as it always has."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar


class Cue(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def text(self) -> str: ...


C = TypeVar("C", bound=Cue)
Voice = Callable[[C], str | None]


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


def vtt_voice(name: str) -> str:
    """A name as a WebVTT voice span's annotation: "&" and ">" escaped, as the spec asks,
    and "<" too; no line breaks (a cue's text is one block)."""
    flat = " ".join(name.split())
    return flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_srt(cues: Sequence[C], voice: Voice[C] | None = None) -> str:
    blocks = []
    for number, cue in enumerate((c for c in cues if c.text.strip()), start=1):
        timing = f"{clock(cue.start, ',')} --> {clock(cue.end, ',')}"
        name = voice(cue) if voice else None
        text = _cue_text(cue.text)
        blocks.append(f"{number}\n{timing}\n{f'{name}: ' if name else ''}{text}\n")
    return "\n".join(blocks)


def to_vtt(cues: Sequence[C], voice: Voice[C] | None = None) -> str:
    blocks = ["WEBVTT\n"]
    for cue in cues:
        if cue.text.strip():
            timing = f"{clock(cue.start, '.')} --> {clock(cue.end, '.')}"
            name = voice(cue) if voice else None
            span = f"<v {vtt_voice(name)}>" if name else ""
            blocks.append(f"{timing}\n{span}{_cue_text(cue.text)}\n")
    return "\n".join(blocks)


def to_text(cues: Sequence[C], full_text: str, voice: Voice[C] | None = None) -> str:
    """One line per segment; the full text when there are no segments. With voices, one
    paragraph per change of speaker, after the speaker's name."""
    if not cues:
        return full_text.strip() + "\n"
    if voice is None:
        return "\n".join(c.text.strip() for c in cues) + "\n"
    paragraphs: list[tuple[str | None, list[str]]] = []
    for cue in (c for c in cues if c.text.strip()):
        name = voice(cue)
        if not paragraphs or paragraphs[-1][0] != name:
            paragraphs.append((name, []))
        paragraphs[-1][1].append(cue.text.strip())
    body = "\n\n".join(f"{f'{n}: ' if n else ''}{' '.join(t)}" for n, t in paragraphs)
    return body + "\n"
