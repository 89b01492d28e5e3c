"""Blob storage for audio: a local directory (LocalBlobStore, file:// URIs) or an S3 bucket
(S3BlobStore, s3:// URIs, for deployments whose nodes share no disk)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import S3Store

_BLOCK_BYTES = 1024 * 1024

# Container (FFmpeg demuxer) name → the content type a job's audio is stored and served with.
AUDIO_CONTENT_TYPES: dict[str, str] = {
    "ogg": "audio/ogg",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "aac": "audio/aac",
    "matroska,webm": "audio/webm",
    "mov,mp4,m4a,3gp,3g2,mj2": "audio/mp4",
    "aiff": "audio/aiff",
    "amr": "audio/amr",
    "caf": "audio/x-caf",
    "asf": "audio/x-ms-wma",
}
# Audio in a container outside the map: served as bytes, never as something a browser runs.
UNKNOWN_AUDIO_TYPE = "application/octet-stream"
# The only content types a job's audio may have: the gateway serves nothing else, and an
# audio.uploaded event of another system naming another one is refused.
ALLOWED_AUDIO_CONTENT_TYPES = frozenset(AUDIO_CONTENT_TYPES.values()) | {UNKNOWN_AUDIO_TYPE}


class BlobTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


class UnsupportedUri(ValueError):
    pass


class OutsideBlobStore(UnsupportedUri):
    """A file:// URI that names a file outside the blob store's root."""


@dataclass(frozen=True)
class StoredBlob:
    uri: str
    sha256: str
    size_bytes: int
    path: Path
    # A second link to the bytes, kept until the blob's rows committed: a concurrent
    # deletion of the same content (another job's) may remove `path` meanwhile, and the
    # commit puts it back from here (restore_blob, under the blob's lock), then lets go.
    pin: Path | None = None


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
        sha = digest.hexdigest()
        final = self.root / sha[:2] / sha
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            pin = tmp.with_suffix(".pin")
            # Pinned and renamed while the lock is still held: once it is let go, a part
            # file counts as abandoned and the janitor may delete it.
            os.link(tmp, pin)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            fh.close()
        await asyncio.to_thread(_fsync_dir, final.parent)  # the rename itself is durable
        return StoredBlob(uri=final.as_uri(), sha256=sha, size_bytes=size, path=final, pin=pin)

    async def put_bytes(self, data: bytes, max_bytes: int | None = None) -> StoredBlob:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(one(), max_bytes if max_bytes is not None else len(data))

    def delete(self, uri: str) -> None:
        """Remove a stored blob; a URI outside the store (a job adopted from another system's
        event) is never deleted, whatever it names."""
        try:
            path = resolve_in_root(uri, self.root)
        except UnsupportedUri:
            return
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

    def remove_stale_pins(self, min_age_s: float) -> int:
        """Delete pins older than `min_age_s`: left by a process that died between storing a
        blob and committing its rows (a live upload lets go of its pin at the commit)."""
        removed = 0
        cutoff = time.time() - min_age_s
        for pin in (self.root / "tmp").glob("*.pin"):
            with contextlib.suppress(FileNotFoundError):
                if pin.stat().st_mtime < cutoff:
                    pin.unlink()
                    removed += 1
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


def restore_blob(blob: StoredBlob) -> None:
    """Put a stored blob's file back from its pin if a concurrent deletion removed it. Call
    it holding the blob's lock, before committing the rows that reference it."""
    if blob.pin is not None and not blob.path.exists():
        with contextlib.suppress(FileExistsError):
            os.link(blob.pin, blob.path)


def release_blob(blob: StoredBlob) -> None:
    """Let go of a stored blob's pin once its rows committed (or the upload was given up)."""
    if blob.pin is not None:
        blob.pin.unlink(missing_ok=True)


def resolve_in_root(uri: str, root: Path) -> Path:
    """The file a file:// URI names, resolved first (symlinks, `..`), then checked to lie
    under `root`: an event or a job row must never make a service read or delete a file
    elsewhere. UnsupportedUri (OutsideBlobStore when outside) otherwise."""
    path = local_path(uri).resolve()
    if not path.is_relative_to(root.resolve()):
        raise OutsideBlobStore(f"audio URI {uri!r} is outside the blob store")
    return path


class BlobNotFound(Exception):
    pass


@dataclass(frozen=True)
class StoredObject:
    uri: str
    sha256: str
    size_bytes: int


class S3BlobStore:
    """Content-addressed objects in an S3 bucket, the same layout as LocalBlobStore:
    `s3://<bucket>/<prefix>/<sha[:2]>/<sha>`. obstore (Rust object_store) does the S3
    protocol: multipart uploads from a stream, retries, request signing, and the standard
    AWS_* environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_ALLOW_HTTP for a plain-http endpoint), so no S3 code of our own.

    An upload streams to `<prefix>/tmp/<uuid>.part` while hashing, then is copied to its
    content address and the part deleted: a reader never sees a partial object.
    """

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise UnsupportedUri(f"not an s3://bucket[/prefix] URL: {url!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._store = S3Store(self.bucket)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def key_of(self, uri: str) -> str:
        """The object key of an s3:// URI inside this store; UnsupportedUri otherwise (an
        event must not make a service read arbitrary buckets)."""
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        inside = not self.prefix or key.startswith(self.prefix + "/")
        if (
            parsed.scheme != "s3"
            or parsed.netloc != self.bucket
            or not inside
            or ".." in key.split("/")
        ):
            raise UnsupportedUri(f"{uri!r} is outside the blob store s3://{self.bucket}")
        return key

    async def put_stream(self, chunks: AsyncIterator[bytes], max_bytes: int) -> StoredObject:
        part = self._key(f"tmp/{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise BlobTooLarge(max_bytes)
                digest.update(chunk)
                yield chunk

        try:
            await obstore.put_async(self._store, part, counted())
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await obstore.delete_async(self._store, part)
            if size > max_bytes and not isinstance(exc, BlobTooLarge):
                raise BlobTooLarge(max_bytes) from exc  # raised inside the upload, wrapped
            raise
        sha = digest.hexdigest()
        final = self._key(f"{sha[:2]}/{sha}")
        try:
            await obstore.copy_async(self._store, part, final)
        finally:
            with contextlib.suppress(Exception):
                await obstore.delete_async(self._store, part)
        return StoredObject(uri=f"s3://{self.bucket}/{final}", sha256=sha, size_bytes=size)

    async def put_bytes(self, data: bytes, max_bytes: int | None = None) -> StoredObject:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(one(), max_bytes if max_bytes is not None else len(data))

    async def put_file(self, path: Path, sha256: str) -> str:
        """Upload a settled local blob (its sha256 known) to its content address; its URI.
        A PUT or multipart upload becomes visible only when complete."""
        key = self._key(f"{sha256[:2]}/{sha256}")
        await obstore.put_async(self._store, key, path)
        return f"s3://{self.bucket}/{key}"

    async def read_into(self, uri: str, write: Callable[[bytes], object], max_bytes: int) -> int:
        """Stream the object at `uri` to `write` (called in a worker thread); its size."""
        key = self.key_of(uri)
        try:
            result = await obstore.get_async(self._store, key)
        except (NotFoundError, FileNotFoundError) as exc:  # obstore raises the builtin
            raise BlobNotFound(f"no object at {uri!r}") from exc
        if result.meta["size"] > max_bytes:
            raise BlobTooLarge(max_bytes)
        size = 0
        async for chunk in result.stream(min_chunk_size=_BLOCK_BYTES):
            size += len(chunk)
            await asyncio.to_thread(write, bytes(chunk))
        return size

    async def size_of(self, uri: str) -> int:
        try:
            meta = await obstore.head_async(self._store, self.key_of(uri))
        except (NotFoundError, FileNotFoundError) as exc:
            raise BlobNotFound(f"no object at {uri!r}") from exc
        return int(meta["size"])

    async def open_range(self, uri: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the object at `uri` as they arrive (one ranged GET). The
        request is made here, so a missing object raises BlobNotFound before any byte."""
        try:
            result = await obstore.get_async(
                self._store, self.key_of(uri), options={"range": (start, end)}
            )
        except (NotFoundError, FileNotFoundError) as exc:
            raise BlobNotFound(f"no object at {uri!r}") from exc

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in result.stream(min_chunk_size=_BLOCK_BYTES):
                yield bytes(chunk)

        return chunks()

    async def delete(self, uri: str) -> None:
        await obstore.delete_async(self._store, self.key_of(uri))

    def delete_blocking(self, uri: str) -> None:
        obstore.delete(self._store, self.key_of(uri))


class S3BackedBlobStore(LocalBlobStore):
    """The gateway's store when nodes share no disk: an upload is received into the local
    directory (a staging copy the gateway probes with ffprobe), then uploaded to S3; the
    StoredBlob names the s3:// object, which is what jobs and events reference. Staging
    copies are referenced by no job, so the blob janitor removes them like any orphan."""

    def __init__(self, root: Path, url: str) -> None:
        super().__init__(root)
        self.remote = S3BlobStore(url)

    async def put_stream(self, chunks: AsyncIterator[bytes], max_bytes: int) -> StoredBlob:
        staged = await super().put_stream(chunks, max_bytes)
        uri = await self.remote.put_file(staged.path, staged.sha256)
        return dataclasses.replace(staged, uri=uri)

    def delete(self, uri: str) -> None:
        if urlparse(uri).scheme != "s3":
            super().delete(uri)
            return
        self.remote.delete_blocking(uri)
        sha = uri.rsplit("/", 1)[-1]
        (self.root / sha[:2] / sha).unlink(missing_ok=True)
