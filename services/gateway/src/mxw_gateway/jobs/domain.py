"""Pure rules of the jobs module: filenames, progress, cursors (audio probing:
mxw_shared.audio)."""

from __future__ import annotations

import base64
import unicodedata
import uuid
from datetime import datetime
from pathlib import PurePosixPath, PureWindowsPath


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
