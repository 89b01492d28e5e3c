"""Transcription with faster-whisper: run a loaded model with a job's options,
return plain data. No database, no Kafka; blocking, so callers run it in a thread."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from faster_whisper.tokenizer import _LANGUAGE_CODES
from mxw_shared.audio_decode import SAMPLE_RATE, Samples
from mxw_shared.contracts import Decoding, JobOptions, Task
from mxw_shared.transcripts import full_text

LANGUAGE_CODES: frozenset[str] = frozenset(_LANGUAGE_CODES)
# Below this peak amplitude (about -60 dBFS) the audio is treated as silence: Whisper
# hallucinates words ("You") on digital silence rather than returning nothing.
SILENCE_PEAK = 1e-3
_WORD = re.compile(r"[^\W_]+")
# split_sentences: a sentence ends after these; a longer one is cut at its longest pause.
_SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")
MAX_SENTENCE_S = 15.0
# echoes_hotwords: a list read back holds this many words or more, this share of the list's.
ECHO_MIN_WORDS = 4
ECHO_SHARE = 0.8
# Whisper's rule for a window without speech (faster-whisper's defaults): likely silence
# and decoded without confidence. Sequential decoding applies it inside faster-whisper;
# its batched pipeline does not (tiny.en heard "you" in tones at 0.855 / -1.40), so
# _run applies it to batched pieces, each one window.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0


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
        return full_text(s.text for s in self.segments)


@dataclass(frozen=True)
class DecodeSettings:
    """Service-wide decoding knobs; the mode may also come per job (JobOptions.decoding)."""

    beam_size: int = 5
    # Sequential mode only (batched always splits the audio at pauses its VAD finds).
    vad_filter: bool = False
    # Batched mode: faster_whisper.BatchedInferencePipeline with this many 30-s pieces per
    # batch.
    batch_size: int = 8
    # "auto": batched for the "model:language" pairs below ("model:*" for every language),
    # where it measured no worse than sequential; sequential elsewhere.
    decoding: Decoding | Literal["auto"] = "auto"
    batched_for: frozenset[str] = frozenset()
    # Audio is decoded and transcribed this many seconds at a time, so memory does not grow
    # with the file's length (about 64 kB per second of audio held, plus the model's work).
    window_s: float = 600.0


# A window is cut at its quietest moment within this many seconds of its end, and a segment
# ending within TAIL_GUARD_S of the cut is left to the next window (which starts where the
# last kept segment ended), so no word is split by a cut.
CUT_SEARCH_S = 10.0
TAIL_GUARD_S = 2.0
LEAD_S = 0.3  # a segment's start is taken this much early where a window begins at it
_CUT_FRAME = SAMPLE_RATE // 10  # quietness is judged per 0.1 s


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
    # fresh one is, with the job's own initial_prompt (windows after the first are too).


def choose_decoding(
    options: JobOptions, model_name: str, language: str | None, decode: DecodeSettings
) -> Decoding:
    """The job's own choice, else the service's; "auto" by the measured table of model and
    language pairs (DecodeSettings.batched_for)."""
    if options.decoding is not None:
        return options.decoding
    if decode.decoding != "auto":
        return decode.decoding
    if {f"{model_name}:{language}", f"{model_name}:*"} & decode.batched_for:
        return Decoding.batched
    return Decoding.sequential


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


class AudioWindows:
    """Consecutive windows of an audio stream (blocks of samples, as mxw_shared.audio_decode
    yields them), holding only the samples from the current window's start on."""

    def __init__(self, blocks: Iterable[Samples]) -> None:
        self._blocks = iter(blocks)
        self._buffer: Samples = np.zeros(0, dtype=np.float32)
        self._first = 0  # sample index of _buffer[0]
        self.exhausted = False

    @property
    def seen_samples(self) -> int:
        """Samples read so far (all of them once `exhausted`)."""
        return self._first + len(self._buffer)

    def take(self, start: int, length: int) -> tuple[Samples, bool]:
        """Samples [start, start + length) and whether they reach the end of the audio.
        Samples before `start` are dropped (a window never goes back); past what was read
        (a resumed run), they are read and skipped."""
        if start < self._first:
            raise ValueError("windows only move forward")
        drop = start - self._first
        skip = max(0, drop - len(self._buffer))
        self._first += min(drop, len(self._buffer))
        pieces = [self._buffer[drop:]]
        held = len(pieces[0])
        while held <= length and not self.exhausted:
            block = next(self._blocks, None)
            if block is None:
                self.exhausted = True
                break
            if skip:
                cut = min(skip, len(block))
                skip -= cut
                self._first += cut
                block = block[cut:]
            pieces.append(block)
            held += len(block)
        self._buffer = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        return self._buffer[:length], self.exhausted and held <= length


def quiet_cut(window: Samples) -> int:
    """Where to end a window that is not the last: the start of its quietest 0.1 s within
    the last CUT_SEARCH_S seconds (a pause, where no word is cut)."""
    search = min(len(window) // 2, int(CUT_SEARCH_S * SAMPLE_RATE))
    tail = window[len(window) - search :]
    frames = len(tail) // _CUT_FRAME
    if frames < 2:
        return len(window)
    energy = np.square(tail[: frames * _CUT_FRAME].reshape(frames, _CUT_FRAME)).mean(axis=1)
    return len(window) - search + int(np.argmin(energy)) * _CUT_FRAME


def transcribe(
    model: Any,
    audio: Samples | Iterable[Samples],
    options: JobOptions,
    decode: DecodeSettings,
    on_progress: Callable[[float], None] | None = None,
    *,
    resume: Resume | None = None,
    on_language: Callable[[str | None, float | None], None] | None = None,
    on_segment: Callable[[TranscriptSegment | None, float], None] | None = None,
    expected_s: float | None = None,
    model_name: str = "",
) -> Transcript:
    """Run `model` (a faster_whisper.WhisperModel) over `audio` honouring every option.

    `audio` is the whole recording, or a stream of blocks (mxw_shared.audio_decode.
    AudioStream) read one window (decode.window_s) at a time, so memory stays bounded
    whatever the length; segment times are absolute either way. The language is decided
    once, on the first speech heard (or taken from the options or `resume`), and the
    decoding mode with it (choose_decoding).

    Segments are produced lazily; as each arrives `on_segment(segment, position_s)` (the
    segment is None when it held no text) and `on_progress(position / duration)` are
    called (duration: the array's, else `expected_s`, else no progress). `on_language` is
    called once, before the first segment. With `resume`, only the audio from
    `resume.start_s` is transcribed; segments continue at `resume.next_idx`; the returned
    transcript holds only those new segments. Exceptions raised by a callback stop the
    work and propagate."""
    if isinstance(audio, np.ndarray):
        blocks: Iterable[Samples] = [audio]
        expected_s = len(audio) / SAMPLE_RATE
    else:
        blocks = audio
    windows = AudioWindows(blocks)
    window = max(int(decode.window_s * SAMPLE_RATE), int(4 * CUT_SEARCH_S * SAMPLE_RATE))
    guard = int(TAIL_GUARD_S * SAMPLE_RATE)
    position = round((resume.start_s if resume is not None else 0.0) * SAMPLE_RATE)
    language = resume.language if resume is not None else options.language
    probability = resume.language_probability if resume is not None else None
    if language is None and not bool(model.model.is_multilingual):
        language = "en"  # an English-only model hears English
    decided = language is not None
    language_told = False
    # Speakers are joined word by word (mxw_shared.speakers), so a job with speakers has
    # word times stored even when its outputs do not show them.
    with_words = options.word_timestamps or options.speakers
    segments: list[TranscriptSegment] = []
    next_idx = resume.next_idx if resume is not None else 0

    def tell_language() -> None:
        nonlocal language_told
        if not language_told and on_language is not None:
            on_language(language, probability)
        language_told = True

    def report(end_s: float) -> None:
        if on_progress is not None and expected_s:
            on_progress(min(end_s / expected_s, 1.0))

    while True:
        samples, last = windows.take(position, window)
        if not last:
            samples = samples[: quiet_cut(samples)]
        offset_s = position / SAMPLE_RATE
        end = position + len(samples)
        resume_at = end  # where the next window starts
        if len(samples) and float(np.max(np.abs(samples))) >= SILENCE_PEAK:
            if not decided:
                language, probability = _detect(model, samples)
                decided = True
            tell_language()
            keep_until = None if last else (end - guard) / SAMPLE_RATE
            kept_end: float | None = None
            crossing_start: float | None = None
            mode = choose_decoding(options, model_name, language, decode)
            for segment, seg_start, seg_end in _run(
                model, samples, offset_s, options, mode, decode, language, with_words, next_idx
            ):
                if keep_until is not None and seg_end > keep_until:
                    crossing_start = seg_start  # the next window hears it whole
                    break
                kept_end = seg_end
                if segment is not None:
                    next_idx += 1
                    segments.append(segment)
                if on_segment is not None:
                    on_segment(segment, seg_end)
                report(seg_end)
            if not last:
                resume_at = next_window_start(position, end, kept_end, crossing_start)
        elif on_segment is not None:  # silence: nothing to hear, but progress
            on_segment(None, round(end / SAMPLE_RATE, 3))
        if last:
            break
        position = resume_at
        report(position / SAMPLE_RATE)
    tell_language()
    duration = windows.seen_samples / SAMPLE_RATE
    if on_progress is not None:
        on_progress(1.0)
    return Transcript(
        language=language,
        # An explicit language, or an English-only model, detects nothing: no probability.
        language_probability=probability,
        duration_s=round(duration, 3),
        segments=tuple(segments),
    )


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def hears_no_speech(no_speech_prob: float, avg_logprob: float) -> bool:
    return no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob <= LOG_PROB_THRESHOLD


def echoes_hotwords(text: str, hotwords: tuple[str, ...]) -> bool:
    """A segment that is the hotwords list read back, not speech: Whisper reads hotwords as
    text said before, and a small model sometimes continues it ("Siobhan, Wojciech, Wojciech,
    ..." until its token limit, tiny.en batched, 2026-12-03). At least ECHO_MIN_WORDS words,
    nearly all of them the list's."""
    if not hotwords:
        return False
    said = _words(text)
    if len(said) < ECHO_MIN_WORDS:
        return False
    listed = {w for term in hotwords for w in _words(term)}
    return sum(w in listed for w in said) >= ECHO_SHARE * len(said)


def next_window_start(
    position: int, end: int, kept_end: float | None, crossing_start: float | None
) -> int:
    """Where the window after [position, end) starts (samples): where the segment left to it
    began (a little before: its time may be late), never before the last kept segment's end;
    with none left over, at the last kept end, else TAIL_GUARD_S before the cut. Always
    forward, so a window is never read twice whole."""
    guard = int(TAIL_GUARD_S * SAMPLE_RATE)
    floor = round(kept_end * SAMPLE_RATE) if kept_end is not None else position
    if crossing_start is not None:
        start = max(floor, round((crossing_start - LEAD_S) * SAMPLE_RATE))
    elif kept_end is not None:
        start = floor
    else:
        start = end - guard
    return max(start, position + guard)


def _detect(model: Any, samples: Samples) -> tuple[str | None, float | None]:
    """The language of the first speech in `samples` (its VAD skips silence and music)."""
    code, probability, _all = model.detect_language(audio=samples, vad_filter=True)
    return code, _f(probability)


def _run(
    model: Any,
    samples: Samples,
    offset_s: float,
    options: JobOptions,
    mode: Decoding,
    decode: DecodeSettings,
    language: str | None,
    with_words: bool,
    first_idx: int,
) -> Iterator[tuple[TranscriptSegment | None, float, float]]:
    """One window through faster-whisper, lazily: (segment or None when it held no text,
    its start and end in seconds of the whole audio)."""
    batched = mode == Decoding.batched
    kwargs: dict[str, Any] = {
        "language": language,
        "task": options.task.value,
        # Batched pieces are up to 30 s, one segment each: their word times split them into
        # sentences (split_sentences; about 5 % more time, the same words).
        "word_timestamps": with_words or batched,
        "initial_prompt": options.initial_prompt,
        "beam_size": decode.beam_size,
        # The custom vocabulary: faster-whisper puts it in the prompt's prefix, where Whisper
        # reads it as words said before (so it prefers their spelling).
        "hotwords": ", ".join(options.hotwords) or None,
        "no_speech_threshold": NO_SPEECH_THRESHOLD,
        "log_prob_threshold": LOG_PROB_THRESHOLD,
    }
    if batched:
        from faster_whisper import BatchedInferencePipeline

        pieces, _info = BatchedInferencePipeline(model).transcribe(
            samples, batch_size=decode.batch_size, vad_filter=True, **kwargs
        )
    else:
        # Conditioned on the text before within a window; each window starts afresh (with
        # the job's prompt), so a misheard passage cannot steer the rest of a long file.
        pieces, _info = model.transcribe(samples, vad_filter=decode.vad_filter, **kwargs)
    window_end = offset_s + len(samples) / SAMPLE_RATE
    idx = first_idx
    floor_s = offset_s  # where the last segment ended: the next starts no earlier
    for seg in pieces:  # faster-whisper works while this is iterated
        text = seg.text.strip()
        if (
            not _WORD.search(text)
            or echoes_hotwords(text, options.hotwords)
            or (batched and hears_no_speech(seg.no_speech_prob, seg.avg_logprob))
        ):
            text = ""  # punctuation alone (". ." heard in music), the prompt read back, no speech
        start = max(offset_s, min(float(seg.start) + offset_s, window_end))
        end = max(start, min(float(seg.end) + offset_s, window_end))
        words = tuple(
            Word(
                start_s=round(max(start, min(float(w.start) + offset_s, end)), 3),
                end_s=round(max(start, min(float(w.end) + offset_s, end)), 3),
                word=w.word,
                probability=round(float(w.probability), 4),
            )
            for w in (seg.words or [])
        )
        if not text:
            yield None, round(start, 3), round(end, 3)
            continue
        whole = TranscriptSegment(
            idx=idx,
            start_s=round(start, 3),
            end_s=round(end, 3),
            text=text,
            avg_logprob=_f(seg.avg_logprob),
            no_speech_prob=_f(seg.no_speech_prob),
            words=words if with_words or batched else None,
        )
        for piece in split_sentences(whole) if batched else [whole]:
            piece = starting_after(piece, floor_s)
            piece = dataclasses.replace(piece, idx=idx, words=piece.words if with_words else None)
            floor_s = piece.end_s
            idx += 1
            yield piece, piece.start_s, piece.end_s


def starting_after(segment: TranscriptSegment, floor_s: float) -> TranscriptSegment:
    """The segment, starting no earlier than `floor_s` (where the one before it ended), its
    words too: Whisper's word times can overlap by a few hundredths across a sentence cut or
    a VAD piece (tiny.en under AVX512: 0.03 s), and a transcript's segments do not overlap."""
    if segment.start_s >= floor_s:
        return segment
    words = tuple(
        dataclasses.replace(w, start_s=max(w.start_s, floor_s), end_s=max(w.end_s, floor_s))
        for w in segment.words or ()
    )
    return dataclasses.replace(
        segment,
        start_s=floor_s,
        end_s=max(segment.end_s, floor_s),
        words=words if segment.words is not None else None,
    )


def split_sentences(segment: TranscriptSegment) -> list[TranscriptSegment]:
    """A long segment cut into sentences by its words: after a word that ends a sentence,
    and where a sentence runs past MAX_SENTENCE_S, at its longest pause. Each piece spans its
    words (the first starts where the segment does, the last ends where it does) and keeps
    the segment's scores. Without words, the segment as it is."""
    words = segment.words or ()
    if not words:
        return [segment]
    groups: list[list[Word]] = [[]]
    for word in words:
        current = groups[-1]
        if current and word.end_s - current[0].start_s > MAX_SENTENCE_S:
            gaps = [current[i + 1].start_s - current[i].end_s for i in range(len(current) - 1)]
            at = gaps.index(max(gaps)) + 1 if gaps else len(current)
            groups[-1], rest = current[:at], current[at:]
            groups.append(rest)
            current = rest
        current.append(word)
        if word.word.strip().endswith(_SENTENCE_END):
            groups.append([])
    groups = [g for g in groups if g]
    if len(groups) == 1:
        return [segment]
    pieces = []
    for n, group in enumerate(groups):
        first = segment.start_s if n == 0 else group[0].start_s
        last = segment.end_s if n == len(groups) - 1 else group[-1].end_s
        pieces.append(
            dataclasses.replace(
                segment,
                start_s=first,
                end_s=max(first, last),
                text="".join(w.word for w in group).strip(),
                words=tuple(group),
            )
        )
    return pieces
