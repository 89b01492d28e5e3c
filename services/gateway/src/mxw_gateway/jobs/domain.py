"""Pure rules of the jobs module: filenames, audio probing, progress, cursors."""

from __future__ import annotations

import base64
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath, PureWindowsPath

import av
from mxw_shared.blobs import AUDIO_CONTENT_TYPES, UNKNOWN_AUDIO_TYPE
from mxw_shared.contracts import JobState, Stage
from mxw_shared.jobs import STAGE_SPAN


class NotAudio(ValueError):
    """The file has no decodable audio stream. The message is safe to show."""


@dataclass(frozen=True)
class AudioInfo:
    container: str
    codec: str
    duration_s: float
    sample_rate: int | None
    channels: int | None

    @property
    def content_type(self) -> str:
        return AUDIO_CONTENT_TYPES.get(self.container, UNKNOWN_AUDIO_TYPE)


def probe_audio(path: Path) -> AudioInfo:
    """Open the file with FFmpeg (PyAV): it must hold an audio stream whose codec decodes and
    whose duration is known. Blocking; run it in a thread."""
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.audio:
                raise NotAudio("the file has no audio stream")
            stream = container.streams.audio[0]
            codec = stream.codec_context.name
            duration: float | None = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            # Decoding one frame proves the codec works on this data, not just the header.
            decoded = False
            last_end = 0.0
            for frame in container.decode(stream):
                decoded = True
                if duration is not None:
                    break
                if frame.time is not None:
                    last_end = float(frame.time) + frame.samples / max(frame.sample_rate, 1)
            if not decoded:
                raise NotAudio("the audio stream holds no decodable frames")
            if duration is None:
                duration = last_end
            return AudioInfo(
                container=container.format.name,
                codec=codec,
                duration_s=round(duration, 3),
                sample_rate=stream.codec_context.sample_rate or None,
                channels=stream.codec_context.channels or None,
            )
    except NotAudio:
        raise
    except Exception as exc:  # FFmpeg rejects what is not media in many different ways
        raise NotAudio("the file is not audio that can be decoded") from exc


def sanitize_filename(raw: str | None, max_chars: int = 200) -> str | None:
    """The client's filename as something safe to store and echo: basename only (either
    slash), no control characters, trimmed, at most `max_chars` (keeping the extension)."""
    if raw is None:
        return None
    name = PureWindowsPath(PurePosixPath(raw).name).name
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().strip(".").strip()
    if not name:
        return None
    if len(name) > max_chars:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10 and stem:
            name = stem[: max_chars - len(ext) - 1] + "." + ext
        else:
            name = name[:max_chars]
    return name


def stage_overall_progress(stage: Stage, state: str, fraction: float) -> float:
    lo, hi = STAGE_SPAN[stage]
    if state == JobState.done:
        return hi
    return round(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), 4)


def job_progress(state: JobState, stages: dict[Stage, tuple[str, float]]) -> float:
    """Overall 0..1 progress: the furthest point any stage row reached."""
    if state == JobState.done:
        return 1.0
    return max(
        (stage_overall_progress(s, st, frac) for s, (st, frac) in stages.items()), default=0.0
    )


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError on anything that is not a cursor this service handed out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, job = raw.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(job)
    except ValueError as exc:  # bad base64, bad UTF-8, bad date or bad UUID
        raise ValueError("invalid cursor") from exc


class RangeNotSatisfiable(ValueError):
    """A Range header none of whose bytes exist in the file (HTTP 416)."""


def parse_byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (start, end exclusive) a `Range: bytes=…` header asks for, or None to send the
    whole file (no header, another unit, several ranges or a malformed one: RFC 9110 lets a
    server ignore those). Raises RangeNotSatisfiable when the range starts past the end."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        start = int(first) if first else None
        end = int(last) if last else None
    except ValueError:
        return None
    if start is None:  # bytes=-N: the last N bytes
        if end is None:
            return None
        if end <= 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - end), size
    if start >= size:
        raise RangeNotSatisfiable(header)
    if end is None:
        return start, size
    if end < start:
        return None
    return start, min(end + 1, size)
