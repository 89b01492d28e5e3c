"""Transcription with faster-whisper: run a loaded model with a job's options,
return plain data. No database, no Kafka; blocking, so callers run it in a thread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from faster_whisper.tokenizer import _LANGUAGE_CODES
from mxw_shared.audio_decode import SAMPLE_RATE
from mxw_shared.contracts import JobOptions, Task

LANGUAGE_CODES: frozenset[str] = frozenset(_LANGUAGE_CODES)
# Below this peak amplitude (about -60 dBFS) the audio is treated as silence: Whisper
# hallucinates words ("You") on digital silence rather than returning nothing.
SILENCE_PEAK = 1e-3


class UnsupportedOptions(ValueError):
    """The job asks for something this model cannot do (e.g. German from an English-only
    model): rejected instead of silently ignored."""


@dataclass(frozen=True)
class Word:
    start_s: float
    end_s: float
    word: str
    probability: float

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start_s,
            "end": self.end_s,
            "word": self.word,
            "probability": self.probability,
        }


@dataclass(frozen=True)
class TranscriptSegment:
    idx: int
    start_s: float
    end_s: float
    text: str
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True)
class Transcript:
    language: str | None
    language_probability: float | None
    duration_s: float
    segments: tuple[TranscriptSegment, ...] = field(default=())

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)


@dataclass(frozen=True)
class DecodeSettings:
    """Service-wide decoding knobs (not per job)."""

    beam_size: int = 5
    vad_filter: bool = False
    # > 0: faster_whisper.BatchedInferencePipeline with this many 30-s windows per batch.
    # It splits the audio at pauses found by its VAD, so it always filters silence.
    batch_size: int = 0


@dataclass(frozen=True)
class Resume:
    """Where an interrupted transcription of the same audio and options goes on from."""

    start_s: float  # end of the last persisted segment
    next_idx: int
    language: str | None
    language_probability: float | None
    # Deliberately no "text so far" as the decoder's prompt: on repeated speech tiny.en
    # prompted with it skipped whole repeats after the resume point (5 of 8 left, WER
    # 49 % against 20 % unprompted, AVX2, 2026-12-02). A resumed run is prompted as a
    # fresh one is, with the job's own initial_prompt.


def check_options(options: JobOptions, multilingual: bool, model_name: str) -> None:
    """Reject options the model cannot honour, before any work is spent."""
    if options.language is not None and options.language not in LANGUAGE_CODES:
        raise UnsupportedOptions(f"language {options.language!r} is not known to Whisper")
    if not multilingual:
        if options.language not in (None, "en"):
            raise UnsupportedOptions(
                f"model {model_name} is English-only; language {options.language!r} "
                "needs a multilingual model (e.g. base or small)"
            )
        if options.task == Task.translate:
            raise UnsupportedOptions(
                f"model {model_name} is English-only and cannot translate; use a multilingual model"
            )


def _f(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


def transcribe(
    model: Any,
    audio: np.ndarray[Any, np.dtype[np.float32]],
    options: JobOptions,
    decode: DecodeSettings,
    on_progress: Callable[[float], None] | None = None,
    *,
    resume: Resume | None = None,
    on_language: Callable[[str | None, float | None], None] | None = None,
    on_segment: Callable[[TranscriptSegment | None, float], None] | None = None,
) -> Transcript:
    """Run `model` (a faster_whisper.WhisperModel) over `audio` honouring every option.

    Segments are produced lazily; as each arrives `on_segment(segment, position_s)` (the
    segment is None when it held no text) and `on_progress(position / duration)` are
    called. `on_language` is called once, before the first segment. With `resume`, only the
    audio from `resume.start_s` is transcribed; segments keep absolute times and continue
    at `resume.next_idx`; the returned transcript holds only those new segments.
    Exceptions raised by a callback stop the work and propagate."""
    duration = len(audio) / SAMPLE_RATE
    offset_s = resume.start_s if resume is not None else 0.0
    first = round(offset_s * SAMPLE_RATE)
    part = audio[first:] if first else audio
    language = resume.language if resume is not None else options.language
    known_probability = resume.language_probability if resume is not None else None

    def finish_early() -> Transcript:
        if on_language is not None:
            on_language(language, known_probability)
        if on_progress is not None:
            on_progress(1.0)
        return Transcript(
            language=language,
            language_probability=known_probability,
            duration_s=round(duration, 3),
        )

    if len(part) == 0 or float(np.max(np.abs(part))) < SILENCE_PEAK:
        return finish_early()
    detected = language is None and bool(model.model.is_multilingual)
    # Speakers are joined word by word (mxw_shared.speakers), so a job with speakers has
    # word times stored even when its outputs do not show them.
    with_words = options.word_timestamps or options.speakers
    kwargs: dict[str, Any] = {
        "language": language,
        "task": options.task.value,
        "word_timestamps": with_words,
        "initial_prompt": options.initial_prompt,
        # The custom vocabulary: faster-whisper puts it in the prompt's prefix, where Whisper
        # reads it as words said before (so it prefers their spelling).
        "hotwords": ", ".join(options.hotwords) or None,
        "beam_size": decode.beam_size,
    }
    if decode.batch_size > 0:
        from faster_whisper import BatchedInferencePipeline

        segments_iter, info = BatchedInferencePipeline(model).transcribe(
            part, batch_size=decode.batch_size, vad_filter=True, **kwargs
        )
    else:
        segments_iter, info = model.transcribe(part, vad_filter=decode.vad_filter, **kwargs)
    language = info.language or language
    probability = _f(info.language_probability) if detected else known_probability
    if on_language is not None:
        on_language(language, probability)
    segments: list[TranscriptSegment] = []
    next_idx = resume.next_idx if resume is not None else 0
    # faster-whisper yields segments lazily: the work happens while iterating.
    for seg in segments_iter:
        text = seg.text.strip()
        start = max(offset_s, min(float(seg.start) + offset_s, duration))
        end = max(start, min(float(seg.end) + offset_s, duration))
        words: tuple[Word, ...] | None = None
        if with_words:
            words = tuple(
                Word(
                    start_s=round(max(start, min(float(w.start) + offset_s, end)), 3),
                    end_s=round(max(start, min(float(w.end) + offset_s, end)), 3),
                    word=w.word,
                    probability=round(float(w.probability), 4),
                )
                for w in (seg.words or [])
            )
        segment: TranscriptSegment | None = None
        if text:
            segment = TranscriptSegment(
                idx=next_idx,
                start_s=round(start, 3),
                end_s=round(end, 3),
                text=text,
                avg_logprob=_f(seg.avg_logprob),
                no_speech_prob=_f(seg.no_speech_prob),
                words=words,
            )
            next_idx += 1
            segments.append(segment)
        if on_segment is not None:
            on_segment(segment, round(end, 3))
        if on_progress is not None:
            on_progress(min(end / duration, 1.0))
    return Transcript(
        language=language,
        # An explicit language, or an English-only model, detects nothing: no probability.
        language_probability=probability,
        duration_s=round(duration, 3),
        segments=tuple(segments),
    )
