"""Decoding audio to what the models hear: mono float32 samples at 16 kHz, opened the one
safe way (mxw_shared.audio) and bounded in decoded duration. Used by the stages that listen
(transcriber, diarizer); needs PyAV and numpy, which only they and the gateway install.
"""

from __future__ import annotations

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


def decode_audio(path: Path, max_seconds: float) -> Samples:
    """Mono float32 samples at 16 kHz, opened with the container and protocol allow-lists
    (mxw_shared.audio). Audio longer than `max_seconds` is refused before decoding when its
    headers say so, and otherwise as soon as decoding passes the limit, so memory stays
    bounded whatever the headers claim. Raises AudioRefused (mxw_shared.audio: container not
    allowed, too long) or AudioDecodeError, each with the reason."""
    limit = max_seconds * SAMPLE_RATE
    try:
        with open_audio(path) as container:
            if not container.streams.audio:
                raise AudioDecodeError("the file has no audio stream")
            stream = container.streams.audio[0]
            declared = declared_duration(container, stream)
            if declared is not None and declared > max_seconds:
                raise AudioTooLong(max_seconds)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            # faster-whisper's steps (skip invalid frames, regroup, resample), counted.
            frames = _resample_frames(
                _group_frames(_ignore_invalid_frames(container.decode(stream)), 500_000),
                resampler,
            )
            pieces: list[np.ndarray[Any, Any]] = []
            count = 0
            for frame in frames:
                piece = frame.to_ndarray().reshape(-1)
                count += len(piece)
                if count > limit:
                    raise AudioTooLong(max_seconds)
                pieces.append(piece)
            del resampler
    except (MemoryError, AudioDecodeError, AudioRefused):
        raise
    except NotAudio as exc:
        raise AudioDecodeError(str(exc)) from exc
    except Exception as exc:  # av raises a family of FFmpeg errors, plus Index/ValueError
        raise AudioDecodeError(f"{type(exc).__name__}: {exc}") from exc
    gc.collect()  # PyAV's resampler objects are freed only by the collector (faster-whisper)
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32) / 32768.0
