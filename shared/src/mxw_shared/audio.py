"""Opening audio with FFmpeg (PyAV) the one safe way: only the containers we serve, only local
files, and a bound on the decoded duration. The gateway probes uploads with it, the
transcriber decodes with it (events from other systems are checked again).

Needs PyAV, which only the services that handle audio (gateway, transcriber) install: the
other services never import this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.container
import av.stream

from mxw_shared.blobs import AUDIO_CONTENT_TYPES

# Nothing outside the containers of AUDIO_CONTENT_TYPES (blobs.py, the one list of what is
# stored and served) is opened: no concat lists, playlists, image sequences or protocols.
# FFmpeg refuses at open time a demuxer outside the list (e.g. `concat` for an ffconcat
# file, which would splice other files of the blob store into one job) and any protocol but
# local files.
_OPEN_OPTIONS = {"format_whitelist": ",".join(AUDIO_CONTENT_TYPES), "protocol_whitelist": "file"}


class NotAudio(ValueError):
    """The file has no decodable audio stream. The message is safe to show."""


class AudioRefused(ValueError):
    """Audio we do not accept: a container outside AUDIO_CONTENT_TYPES, or too long. The message is
    safe to show."""


class ContainerNotAllowed(AudioRefused):
    def __init__(self, name: str | None = None) -> None:
        what = f"container {name!r}" if name else "the file's container"
        super().__init__(
            f"{what} is not accepted; accepted: ogg, wav, mp3, flac, aac, webm/matroska, "
            "mp4/m4a, aiff, amr, caf, asf"
        )


class AudioTooLong(AudioRefused):
    def __init__(self, max_seconds: float) -> None:
        super().__init__(f"the audio is longer than the limit of {max_seconds:g} s")
        self.max_seconds = max_seconds


@dataclass(frozen=True)
class AudioInfo:
    container: str
    codec: str
    duration_s: float
    sample_rate: int | None
    channels: int | None

    @property
    def content_type(self) -> str:
        return AUDIO_CONTENT_TYPES[self.container]


@contextlib.contextmanager
def open_audio(path: Path) -> Iterator[av.container.InputContainer]:
    """The file opened for reading with the container and protocol allow-lists. Raises
    ContainerNotAllowed, or NotAudio for what FFmpeg cannot read at all."""
    try:
        container = av.open(
            str(path), mode="r", container_options=_OPEN_OPTIONS, metadata_errors="ignore"
        )
    except av.ArgumentError as exc:  # a format FFmpeg knows, refused by the allow-list
        raise ContainerNotAllowed() from exc
    except Exception as exc:  # FFmpeg rejects what is not media in many different ways
        raise NotAudio("the file is not audio that can be decoded") from exc
    with container:
        if container.format.name not in AUDIO_CONTENT_TYPES:
            raise ContainerNotAllowed(container.format.name)
        yield container


def declared_duration(
    container: av.container.InputContainer, stream: av.stream.Stream
) -> float | None:
    """The duration the headers state, when they state one."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None


def probe_audio(path: Path, max_seconds: float) -> AudioInfo:
    """The file must hold an audio stream whose codec decodes, in an allowed container, no
    longer than `max_seconds`. Without a duration in its headers the audio is decoded to
    measure it, but never past `max_seconds`. Blocking; run it in a thread."""
    try:
        with open_audio(path) as container:
            if not container.streams.audio:
                raise NotAudio("the file has no audio stream")
            stream = container.streams.audio[0]
            codec = stream.codec_context.name
            duration = declared_duration(container, stream)
            if duration is not None and duration > max_seconds:
                raise AudioTooLong(max_seconds)
            # Decoding one frame proves the codec works on this data, not just the header.
            decoded = False
            decoded_s = 0.0
            for frame in container.decode(stream):
                decoded = True
                if duration is not None:
                    break
                end = frame.samples / max(frame.sample_rate, 1)
                decoded_s = max(decoded_s + end, (frame.time or 0.0) + end)
                if decoded_s > max_seconds:
                    raise AudioTooLong(max_seconds)
            if not decoded:
                raise NotAudio("the audio stream holds no decodable frames")
            return AudioInfo(
                container=container.format.name,
                codec=codec,
                duration_s=round(duration if duration is not None else decoded_s, 3),
                sample_rate=stream.codec_context.sample_rate or None,
                channels=stream.codec_context.channels or None,
            )
    except (NotAudio, AudioRefused):
        raise
    except Exception as exc:  # FFmpeg rejects what is not media in many different ways
        raise NotAudio("the file is not audio that can be decoded") from exc
