"""A person's corrections of a transcript: pure functions over its segments, no I/O.

Every operation returns the whole new segment list; `diff` turns old and new into one
`Change` (the run of positions that differs, before and after), which is what a revision
stores. Undoing a change puts `before` back, so any earlier revision, revision 0 (the
machine transcript) among them, is the current list with the later changes undone in
reverse order. Segment positions are their indices (idx 0..n-1 in time order): a split or
a merge renumbers the segments after it, and a change's positions are those of its own
revision.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from mxw_shared.contracts import CONTROL_CHARACTERS
from mxw_shared.speakers import Turn

MAX_SEGMENT_CHARS = 2000
_TOKEN = re.compile(r"\S+")
_COMPARABLE = re.compile(r"[\W_]+")


class EditRefused(ValueError):
    """The edit is not possible as asked (HTTP 422): nothing changes."""


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str  # as Whisper writes it: with its leading space
    probability: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "word": self.word,
            "probability": self.probability,
        }


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...] | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "start_s": self.start_s,
            "end_s": self.end_s,
            "text": self.text,
            "words": None if self.words is None else [w.as_json() for w in self.words],
            "avg_logprob": self.avg_logprob,
            "no_speech_prob": self.no_speech_prob,
        }


def words_from_json(raw: Sequence[dict[str, Any]] | None) -> tuple[Word, ...] | None:
    if raw is None:
        return None
    return tuple(
        Word(float(w["start"]), float(w["end"]), str(w["word"]), w.get("probability")) for w in raw
    )


def segment_from_json(raw: dict[str, Any]) -> Segment:
    return Segment(
        start_s=float(raw["start_s"]),
        end_s=float(raw["end_s"]),
        text=str(raw["text"]),
        words=words_from_json(raw.get("words")),
        avg_logprob=raw.get("avg_logprob"),
        no_speech_prob=raw.get("no_speech_prob"),
    )


@dataclass(frozen=True)
class Change:
    """Positions `first`… of the segment list: `before` replaced by `after`; the speaker
    turns before and after when the revision changed them (None: untouched)."""

    first: int
    before: tuple[Segment, ...]
    after: tuple[Segment, ...]
    turns_before: tuple[Turn, ...] | None = None
    turns_after: tuple[Turn, ...] | None = None

    @property
    def span(self) -> tuple[float, float]:
        """The audio the change touched (its segments' and turns' times, old and new)."""
        times = [(s.start_s, s.end_s) for s in (*self.before, *self.after)]
        if self.turns_before is not None and self.turns_after is not None:
            old, new = set(self.turns_before), set(self.turns_after)
            times += [(t.start_s, t.end_s) for t in old ^ new]
        if not times:
            return (0.0, 0.0)
        return (min(a for a, _ in times), max(b for _, b in times))

    def as_json(self) -> dict[str, Any]:
        def turns(value: tuple[Turn, ...] | None) -> list[dict[str, Any]] | None:
            if value is None:
                return None
            return [{"start_s": t.start_s, "end_s": t.end_s, "speaker": t.speaker} for t in value]

        return {
            "first": self.first,
            "before": [s.as_json() for s in self.before],
            "after": [s.as_json() for s in self.after],
            "turns_before": turns(self.turns_before),
            "turns_after": turns(self.turns_after),
        }


def change_from_json(raw: dict[str, Any]) -> Change:
    def turns(value: list[dict[str, Any]] | None) -> tuple[Turn, ...] | None:
        if value is None:
            return None
        return tuple(Turn(float(t["start_s"]), float(t["end_s"]), str(t["speaker"])) for t in value)

    return Change(
        first=int(raw["first"]),
        before=tuple(segment_from_json(s) for s in raw["before"]),
        after=tuple(segment_from_json(s) for s in raw["after"]),
        turns_before=turns(raw.get("turns_before")),
        turns_after=turns(raw.get("turns_after")),
    )


def diff(old: Sequence[Segment], new: Sequence[Segment]) -> Change:
    """The one run of positions where `new` differs from `old` (common head and tail
    left out); empty before and after when nothing differs."""
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while (
        tail < min(len(old), len(new)) - head
        and old[len(old) - 1 - tail] == new[len(new) - 1 - tail]
    ):
        tail += 1
    return Change(head, tuple(old[head : len(old) - tail]), tuple(new[head : len(new) - tail]))


def undo(segments: Sequence[Segment], change: Change) -> list[Segment]:
    """`segments` as they were before `change`."""
    out = list(segments)
    out[change.first : change.first + len(change.after)] = change.before
    return out


def check_text(text: str) -> str:
    """A segment's text as stored: trimmed, on one line of words; refused when empty,
    too long or carrying control characters."""
    cleaned = " ".join(text.split())
    if not cleaned:
        raise EditRefused("the text is empty (merge or delete the segment's words instead)")
    if len(cleaned) > MAX_SEGMENT_CHARS:
        raise EditRefused(f"a segment's text has at most {MAX_SEGMENT_CHARS} characters")
    if CONTROL_CHARACTERS.search(cleaned):
        raise EditRefused("the text contains control characters")
    return cleaned


def _position(segments: Sequence[Segment], index: int) -> Segment:
    if not 0 <= index < len(segments):
        raise EditRefused(f"no segment {index} (the transcript has {len(segments)})")
    return segments[index]


def _comparable(token: str) -> str:
    return _COMPARABLE.sub("", token.lower())


def realign_words(
    words: Sequence[Word], text: str, start_s: float, end_s: float
) -> tuple[Word, ...]:
    """Word times for a corrected text: a word kept from the old words keeps its time
    (compared without case and punctuation, in order); words replacing as many old ones
    take their times one for one; other new words share the time of the words they
    replace, or of the gap they fill, evenly."""
    tokens = _TOKEN.findall(text)
    matcher = difflib.SequenceMatcher(
        a=[_comparable(w.word) for w in words], b=[_comparable(t) for t in tokens], autojunk=False
    )
    out: list[Word] = []
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        new = tokens[b0:b1]
        if tag == "equal" or (tag == "replace" and a1 - a0 == b1 - b0):
            out += [
                Word(old.start, old.end, f" {token}", old.probability if tag == "equal" else None)
                for old, token in zip(words[a0:a1], new, strict=True)
            ]
            continue
        if not new:
            continue  # words deleted
        if a1 > a0:  # replaced by a different number of words: their time
            lo, hi = words[a0].start, words[a1 - 1].end
        else:  # inserted: the gap between the neighbours
            lo = words[a0 - 1].end if a0 > 0 else start_s
            hi = words[a0].start if a0 < len(words) else end_s
        hi = max(hi, lo)
        step = (hi - lo) / len(new)
        out += [
            Word(round(lo + k * step, 3), round(lo + (k + 1) * step, 3), f" {token}", None)
            for k, token in enumerate(new)
        ]
    return tuple(out)


def edit_text(segments: Sequence[Segment], index: int, text: str) -> list[Segment]:
    segment = _position(segments, index)
    cleaned = check_text(text)
    words = (
        None
        if segment.words is None
        else realign_words(segment.words, cleaned, segment.start_s, segment.end_s)
    )
    out = list(segments)
    out[index] = replace(segment, text=cleaned, words=words)
    return out


def set_times(
    segments: Sequence[Segment],
    index: int,
    start_s: float | None,
    end_s: float | None,
    duration_s: float,
) -> list[Segment]:
    """New start and/or end of a segment: within the audio, start before end, and no
    earlier than the previous segment's start nor later than the next one's end (the
    order of the transcript stays its order in time). Words are kept inside."""
    segment = _position(segments, index)
    start = segment.start_s if start_s is None else start_s
    end = segment.end_s if end_s is None else end_s
    if not 0 <= start < end <= duration_s:
        raise EditRefused(f"times must satisfy 0 ≤ start < end ≤ {duration_s:g} (the audio)")
    if index > 0 and start < segments[index - 1].start_s:
        raise EditRefused(
            f"start {start:g} is before the previous segment's start "
            f"({segments[index - 1].start_s:g})"
        )
    if index + 1 < len(segments) and end > segments[index + 1].end_s:
        raise EditRefused(
            f"end {end:g} is after the next segment's end ({segments[index + 1].end_s:g})"
        )
    words = None
    if segment.words is not None:
        words = tuple(
            replace(w, start=min(max(w.start, start), end), end=min(max(w.end, start), end))
            for w in segment.words
        )
    out = list(segments)
    out[index] = replace(segment, start_s=start, end_s=end, words=words)
    return out


def split(
    segments: Sequence[Segment], index: int, offset: int, at_s: float | None
) -> list[Segment]:
    """Two segments from one, the second starting at character `offset` of its text (both
    parts keep words), cut at `at_s`, or where its words say (between the last word of the
    first part and the first of the second), or in proportion to the characters."""
    segment = _position(segments, index)
    first_text, second_text = segment.text[:offset].strip(), segment.text[offset:].strip()
    if not 0 < offset < len(segment.text) or not first_text or not second_text:
        raise EditRefused(
            f"a split needs words on both sides: offset 1..{len(segment.text) - 1} within the "
            "segment's text, not at its edge or in spaces there"
        )
    first_count = len(_TOKEN.findall(first_text))
    words = segment.words
    words_fit = words is not None and len(words) == len(_TOKEN.findall(segment.text))
    if at_s is None:
        if words is not None and words_fit and 0 < first_count < len(words):
            at_s = round((words[first_count - 1].end + words[first_count].start) / 2, 3)
        else:
            share = len(segment.text[:offset]) / len(segment.text)
            at_s = round(segment.start_s + share * (segment.end_s - segment.start_s), 3)
    if not segment.start_s < at_s < segment.end_s:
        raise EditRefused(
            f"the cut at {at_s:g} s is outside the segment "
            f"({segment.start_s:g}..{segment.end_s:g}, exclusive)"
        )
    first_words = second_words = None
    if words is not None:
        if words_fit:
            first_words, second_words = words[:first_count], words[first_count:]
        else:
            first_words = tuple(w for w in words if (w.start + w.end) / 2 < at_s)
            second_words = tuple(w for w in words if (w.start + w.end) / 2 >= at_s)
    head = replace(segment, end_s=at_s, text=first_text, words=first_words)
    rest = replace(segment, start_s=at_s, text=second_text, words=second_words)
    return [*segments[:index], head, rest, *segments[index + 1 :]]


def merge(segments: Sequence[Segment], index: int) -> list[Segment]:
    """A segment and the next one as one."""
    first = _position(segments, index)
    if index + 1 >= len(segments):
        raise EditRefused(f"segment {index} is the last one: there is no next one to merge")
    second = segments[index + 1]
    words = None
    if first.words is not None or second.words is not None:
        words = (*(first.words or ()), *(second.words or ()))

    def mean(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else (a + b) / 2

    joined = Segment(
        start_s=min(first.start_s, second.start_s),
        end_s=max(first.end_s, second.end_s),
        text=check_text(f"{first.text} {second.text}"),
        words=words,
        avg_logprob=mean(first.avg_logprob, second.avg_logprob),
        no_speech_prob=mean(first.no_speech_prob, second.no_speech_prob),
    )
    return [*segments[:index], joined, *segments[index + 2 :]]


def describe(change: Change, operation: str) -> str:
    """The history's line for a change, in words."""
    if operation == "text" and len(change.before) == len(change.after) == 1:
        old, new = _short(change.before[0].text), _short(change.after[0].text)
        return f"segment {change.first}: “{old}” → “{new}”"
    if operation == "times" and len(change.after) == 1:
        b, a = change.before[0], change.after[0]
        return f"segment {change.first}: {b.start_s:g}–{b.end_s:g} s → {a.start_s:g}–{a.end_s:g} s"
    if operation == "split":
        return f"segment {change.first} split at {change.after[0].end_s:g} s"
    if operation == "merge":
        return f"segments {change.first} and {change.first + 1} merged"
    start, end = change.span
    return f"{operation}: {start:g}–{end:g} s"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
