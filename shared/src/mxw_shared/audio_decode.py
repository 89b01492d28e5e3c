"""Decoding audio to what the models hear: mono float32 samples at 16 kHz, opened the one
safe way (mxw_shared.audio) and bounded in decoded duration. Used by the stages that listen
(transcriber, diarizer); needs PyAV and numpy, which only they and the gateway install.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import av
import av.audio.fifo
import numpy as np

from mxw_shared.audio import AudioRefused, AudioTooLong, NotAudio, declared_duration, open_audio

SAMPLE_RATE = 16_000
Samples = np.ndarray[Any, np.dtype[np.float32]]


class AudioDecodeError(Exception):
    """The bytes are not audio that FFmpeg can decode."""


def _ignore_invalid_frames(frames: Iterable[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    iterator = iter(frames)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            break
        except av.error.InvalidDataError:  # a damaged frame: skip it, as FFmpeg's CLI does
            continue


def _group_frames(frames: Iterable[av.AudioFrame], num_samples: int) -> Iterator[av.AudioFrame]:
    """Frames regrouped into blocks of `num_samples` (fewer resampler calls)."""
    fifo = av.audio.fifo.AudioFifo()
    for frame in frames:
        frame.pts = None  # regrouped frames have no timestamps to check
        fifo.write(frame)
        if fifo.samples >= num_samples:
            block = fifo.read()
            if block is not None:
                yield block
    if fifo.samples > 0 and (block := fifo.read()) is not None:
        yield block


def _resample_frames(
    frames: Iterable[av.AudioFrame], resampler: av.AudioResampler
) -> Iterator[av.AudioFrame]:
    for frame in itertools.chain(frames, [None]):  # None flushes the resampler
        yield from resampler.resample(frame)


class AudioStream:
    """An audio file decoded block by block (about 10 s each) to mono float32 samples at
    16 kHz, opened with the container and protocol allow-lists (mxw_shared.audio), so a
    caller holds only what it keeps. Audio longer than `max_seconds` is refused on opening
    when its headers say so, and otherwise as soon as decoding passes the limit. Raises
    AudioRefused (mxw_shared.audio: container not allowed, too long) or AudioDecodeError,
    each with the reason, on opening or while iterating. Blocking; use it in a thread.

        with AudioStream(path, max_seconds) as audio:
            for block in audio: ...
    """

    def __init__(self, path: Path, max_seconds: float) -> None:
        self.path = path
        self.max_seconds = max_seconds
        self.declared_s: float | None = None  # the duration the headers state, if any
        self._container: Any = None
        self._opened = contextlib.ExitStack()

    def __enter__(self) -> AudioStream:
        with contextlib.ExitStack() as opened, _decode_errors():
            container = opened.enter_context(open_audio(self.path))
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            stream = container.streams.audio[0]
            self.declared_s = declared_duration(container, stream)
            if self.declared_s is not None and self.declared_s > self.max_seconds:
                raise AudioTooLong(self.max_seconds)
            self._opened = opened.pop_all()  # kept open until __exit__
            self._container = container
        return self

    def __exit__(self, *exc: object) -> None:
        self._container = None
        self._opened.close()
        gc.collect()  # PyAV's resampler objects are freed only by the collector

    def __iter__(self) -> Iterator[Samples]:
        if self._container is None:
            raise RuntimeError("AudioStream is used inside `with`")
        container = self._container
        limit = self.max_seconds * SAMPLE_RATE
        with _decode_errors():
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            # faster-whisper's steps (skip invalid frames, regroup, resample), counted.
            frames = _resample_frames(
                _group_frames(
                    _ignore_invalid_frames(container.decode(container.streams.audio[0])),
                    500_000,
                ),
                resampler,
            )
            count = 0
            for frame in frames:
                piece = frame.to_ndarray().reshape(-1)
                count += len(piece)
                if count > limit:
                    raise AudioTooLong(self.max_seconds)
                yield piece.astype(np.float32) / np.float32(32768.0)


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    """FFmpeg's errors (av raises a family of them, plus Index/ValueError) as
    AudioDecodeError; the module's own errors and MemoryError as they are."""
    try:
        yield
    except (MemoryError, AudioDecodeError, AudioRefused):
        raise
    except NotAudio as exc:
        raise AudioDecodeError(str(exc)) from exc
    except Exception as exc:
        raise AudioDecodeError(f"{type(exc).__name__}: {exc}") from exc


def decode_audio(path: Path, max_seconds: float) -> Samples:
    """The whole file at once (AudioStream's samples, joined): for audio a caller needs in
    one piece; memory grows with the duration (bounded by `max_seconds`)."""
    with AudioStream(path, max_seconds) as audio:
        pieces = list(audio)
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces)
