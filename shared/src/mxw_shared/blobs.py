"""Blob storage for audio. Local directory here; the URI scheme keeps the door open for
s3:// and http(s):// sources (read by the transcriber)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

_BLOCK_BYTES = 1024 * 1024


class BlobTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


class UnsupportedUri(ValueError):
    pass


@dataclass(frozen=True)
class StoredBlob:
    uri: str
    sha256: str
    size_bytes: int
    path: Path


class LocalBlobStore:
    """Content-addressed files under one root: `<root>/<sha[:2]>/<sha>`.

    Writes stream to a temporary file while hashing, then rename into place, so a reader
    never sees a partial blob and identical content is stored once.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    async def put_stream(self, chunks: AsyncIterator[bytes], max_bytes: int) -> StoredBlob:
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        fh = await asyncio.to_thread(tmp.open, "wb")
        # Held while this writer lives: a part file nobody holds is abandoned (see
        # remove_abandoned_parts), whichever replica or process wrote it.
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)

        def hash_and_write(block: bytes) -> None:
            # Both release the GIL on large buffers: this overlaps with receiving.
            digest.update(block)
            fh.write(block)

        # Receive into a block while the previous block is hashed and written in a worker
        # thread: one thread hop per block instead of per (small) network chunk, and
        # receiving never waits for the disk unless the disk is the slower side.
        block = bytearray()
        writing: asyncio.Future[None] | None = None
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise BlobTooLarge(max_bytes)
                block += chunk
                if len(block) >= _BLOCK_BYTES:
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(asyncio.to_thread(hash_and_write, bytes(block)))
                    block.clear()
            if writing is not None:
                await writing
                writing = None
            if block:
                await asyncio.to_thread(hash_and_write, bytes(block))
            await asyncio.to_thread(fh.flush)
            await asyncio.to_thread(os.fsync, fh.fileno())
        except BaseException:
            if writing is not None:  # let the thread finish before the file goes away
                with contextlib.suppress(BaseException):
                    await writing
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        fh.close()
        sha = digest.hexdigest()
        final = self.root / sha[:2] / sha
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        await asyncio.to_thread(_fsync_dir, final.parent)  # the rename itself is durable
        return StoredBlob(uri=final.as_uri(), sha256=sha, size_bytes=size, path=final)

    async def put_bytes(self, data: bytes, max_bytes: int | None = None) -> StoredBlob:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(one(), max_bytes if max_bytes is not None else len(data))

    def delete(self, uri: str) -> None:
        path = local_path(uri)
        if path.is_relative_to(self.root):
            path.unlink(missing_ok=True)

    def remove_abandoned_parts(self, min_age_s: float = 30.0) -> int:
        """Delete partial uploads whose writer is gone (a killed or crashed process): its
        lock went with it. Young files are skipped: a writer may not hold its lock yet."""
        removed = 0
        cutoff = time.time() - min_age_s
        for part in (self.root / "tmp").glob("*.part"):
            try:
                if part.stat().st_mtime > cutoff:
                    continue
                with part.open("rb") as fh:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live upload
                    part.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def stored_uris(self, min_age_s: float) -> list[str]:
        """URIs of stored blobs older than `min_age_s` (candidates for orphan checks)."""
        cutoff = time.time() - min_age_s
        return [
            path.as_uri()
            for path in self.root.glob("[0-9a-f][0-9a-f]/*")
            if path.is_file() and path.stat().st_mtime < cutoff
        ]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def local_path(uri: str) -> Path:
    """The filesystem path of a file:// URI."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise UnsupportedUri(f"not a file:// URI: {uri!r}")
    if parsed.netloc not in ("", "localhost"):
        raise UnsupportedUri(f"file:// URI names a remote host: {uri!r}")
    return Path(unquote(parsed.path))
