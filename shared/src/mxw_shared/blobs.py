"""Blob storage for audio: one BlobStore protocol, two stores. LocalBlobStore keeps blobs in a
local directory (file:// URIs); S3BlobStore keeps them in an S3 bucket (s3:// URIs, for
deployments whose nodes share no disk), receiving uploads into a LocalBlobStore first.
`open_blob_store` builds the one a service's settings name."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
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
    # commit puts it back from here (BlobStore.restore, under the blob's lock), then lets go
    # (release_blob).
    pin: Path | None = None


class BlobNotFound(Exception):
    pass


class BlobStore(Protocol):
    """Where a deployment keeps its audio: the one interface every service uses, so no
    caller decides by URI scheme or store type where bytes are. A URI the store does not own
    (another bucket, a file outside its root, another scheme) is refused by every read with
    UnsupportedUri (OutsideBlobStore for files outside the root) and never deleted."""

    def owns(self, uri: str) -> bool:
        """Whether `uri` names a blob of this store (whether or not it exists)."""
        ...

    async def put_stream(self, chunks: AsyncIterator[bytes], max_bytes: int) -> StoredBlob:
        """Store the bytes as they arrive, hashing them; BlobTooLarge past `max_bytes`, with
        nothing left behind. The StoredBlob's `path` is a local file with the bytes (what
        the gateway probes) and its `pin` keeps them until release_blob."""
        ...

    async def put_bytes(self, data: bytes, max_bytes: int | None = None) -> StoredBlob: ...

    async def restore(self, blob: StoredBlob) -> None:
        """Put a just stored blob back from its pin if a concurrent deletion (of the same
        content, another job's) removed it. Call it holding the blob's lock, before
        committing the rows that reference it; release_blob lets go of the pin after."""
        ...

    async def size_of(self, uri: str) -> int:
        """The blob's size in bytes; BlobNotFound when it is not stored."""
        ...

    async def open(self, uri: str) -> AsyncIterator[bytes]:
        """All of the blob's bytes as they are read. The blob is looked up here, so a missing
        one raises BlobNotFound before any byte."""
        ...

    async def open_range(self, uri: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the blob, as `open`."""
        ...

    def local_file(
        self, uri: str, max_download_bytes: int
    ) -> contextlib.AbstractAsyncContextManager[Path]:
        """A local file with the blob's bytes while the context lasts (decoders need a file):
        the stored file itself where the store keeps it on this disk, else a temporary
        download of at most `max_download_bytes` (BlobTooLarge past it), removed on exit."""
        ...

    async def delete(self, uri: str) -> None:
        """Remove the blob (a missing one is no error); a URI the store does not own is left
        alone, whatever it names."""
        ...

    # Upkeep of the store's local directory, run by the gateway's blob janitor.
    def remove_abandoned_parts(self, min_age_s: float = 30.0) -> int: ...

    def remove_stale_pins(self, min_age_s: float) -> int: ...

    def stored_uris(self, min_age_s: float) -> list[str]: ...


class LocalBlobStore:
    """Content-addressed files under one root: `<root>/<sha[:2]>/<sha>`.

    Writes stream to a temporary file while hashing, then rename into place, so a reader
    never sees a partial blob and identical content is stored once.
    """

    def __init__(self, root: Path, *, create: bool = True) -> None:
        """`create=False` for a service that only reads (its volume may be mounted
        read-only): the directory is then not made."""
        self.root = root.resolve()
        if create:
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

    async def restore(self, blob: StoredBlob) -> None:
        await asyncio.to_thread(restore_blob, blob)

    def owns(self, uri: str) -> bool:
        try:
            resolve_in_root(uri, self.root)
        except UnsupportedUri:
            return False
        return True

    def _stored_file(self, uri: str) -> Path:
        """The file of a blob of this store; UnsupportedUri outside it, BlobNotFound when
        not stored."""
        path = resolve_in_root(uri, self.root)
        if not path.is_file():
            raise BlobNotFound(f"audio not found at {uri!r}")
        return path

    async def size_of(self, uri: str) -> int:
        path = await asyncio.to_thread(self._stored_file, uri)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError as exc:  # deleted meanwhile
            raise BlobNotFound(f"audio not found at {uri!r}") from exc

    async def open(self, uri: str) -> AsyncIterator[bytes]:
        return await self._open(uri, 0, None)

    async def open_range(self, uri: str, start: int, end: int) -> AsyncIterator[bytes]:
        return await self._open(uri, start, end)

    async def _open(self, uri: str, start: int, end: int | None) -> AsyncIterator[bytes]:
        path = await asyncio.to_thread(self._stored_file, uri)
        try:
            fh = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(f"audio not found at {uri!r}") from exc

        async def chunks() -> AsyncIterator[bytes]:
            # The open file keeps its bytes readable even if the blob is deleted meanwhile.
            try:
                await asyncio.to_thread(fh.seek, start)
                left = None if end is None else max(0, end - start)
                while left is None or left > 0:
                    want = _BLOCK_BYTES if left is None else min(_BLOCK_BYTES, left)
                    block = await asyncio.to_thread(fh.read, want)
                    if not block:
                        return
                    if left is not None:
                        left -= len(block)
                    yield block
            finally:
                fh.close()

        return chunks()

    @contextlib.asynccontextmanager
    async def local_file(self, uri: str, max_download_bytes: int) -> AsyncIterator[Path]:
        # On this disk already: used where it lies, whatever its size (nothing is fetched).
        yield await asyncio.to_thread(self._stored_file, uri)

    async def delete(self, uri: str) -> None:
        """Remove a stored blob; a URI outside the store (a job adopted from another system's
        event) is never deleted, whatever it names."""
        await asyncio.to_thread(self._delete, uri)

    def _delete(self, uri: str) -> None:
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


class S3Bucket:
    """Content-addressed objects under one prefix of an S3 bucket:
    `s3://<bucket>/<prefix>/<sha[:2]>/<sha>`, the same layout as LocalBlobStore. obstore
    (Rust object_store) does the S3 protocol: multipart uploads, retries, request signing,
    and the standard AWS_* environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP for a plain-http endpoint), so no S3 code of our own.
    The object side of S3BlobStore; nothing else uses it."""

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

    def owns(self, uri: str) -> bool:
        try:
            self.key_of(uri)
        except UnsupportedUri:
            return False
        return True

    async def put_file(self, path: Path, sha256: str) -> str:
        """Upload a settled local blob (its sha256 known) to its content address; its URI.
        A PUT or multipart upload becomes visible only when complete."""
        key = self._key(f"{sha256[:2]}/{sha256}")
        await obstore.put_async(self._store, key, path)
        return f"s3://{self.bucket}/{key}"

    async def get(self, uri: str, byte_range: tuple[int, int] | None = None) -> obstore.GetResult:
        """The object at `uri` (or a range of it), its bytes not yet read: the request is
        made here, so a missing object raises BlobNotFound before any byte."""
        key = self.key_of(uri)
        try:
            if byte_range is None:
                return await obstore.get_async(self._store, key)
            return await obstore.get_async(self._store, key, options={"range": byte_range})
        except (NotFoundError, FileNotFoundError) as exc:  # obstore raises the builtin
            raise BlobNotFound(f"no object at {uri!r}") from exc

    async def size_of(self, uri: str) -> int:
        try:
            meta = await obstore.head_async(self._store, self.key_of(uri))
        except (NotFoundError, FileNotFoundError) as exc:
            raise BlobNotFound(f"no object at {uri!r}") from exc
        return int(meta["size"])

    async def delete(self, uri: str) -> None:
        await obstore.delete_async(self._store, self.key_of(uri))


async def _chunks_of(result: obstore.GetResult) -> AsyncIterator[bytes]:
    async for chunk in result.stream(min_chunk_size=_BLOCK_BYTES):
        yield bytes(chunk)


class S3BlobStore:
    """The store when nodes share no disk: blobs are objects of an S3 bucket (S3Bucket).
    An upload is received into a local directory first (`staging`, a LocalBlobStore: its
    hashing, size limit, part-file locks, fsync and pins), so the gateway can probe a file,
    then uploaded to the bucket; the StoredBlob names the s3:// object, which is what jobs
    and events reference, and its path/pin the staging copy. Staging copies are referenced
    by no job, so the blob janitor removes them like any orphan.

    The store owns its objects and the files of its staging directory: jobs stored there
    before the deployment moved to S3 are still read and deleted through it."""

    def __init__(self, url: str, staging: LocalBlobStore) -> None:
        self._bucket = S3Bucket(url)
        self._staging = staging

    @property
    def url(self) -> str:
        """The store's s3://bucket/prefix."""
        return f"s3://{self._bucket.bucket}/{self._bucket.prefix}".rstrip("/")

    def owns(self, uri: str) -> bool:
        return self._bucket.owns(uri) or self._staging.owns(uri)

    async def put_stream(self, chunks: AsyncIterator[bytes], max_bytes: int) -> StoredBlob:
        staged = await self._staging.put_stream(chunks, max_bytes)
        try:
            uri = await self._bucket.put_file(staged.path, staged.sha256)
        except BaseException:
            release_blob(staged)  # the staged copy is left to the janitor, as any orphan
            raise
        return dataclasses.replace(staged, uri=uri)

    async def put_bytes(self, data: bytes, max_bytes: int | None = None) -> StoredBlob:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(one(), max_bytes if max_bytes is not None else len(data))

    async def restore(self, blob: StoredBlob) -> None:
        await self._staging.restore(blob)  # the staging copy, from the pin
        if not self._bucket.owns(blob.uri):
            return
        try:
            await self._bucket.size_of(blob.uri)
        except BlobNotFound:
            # A deletion of the same content removed the object after this upload put it:
            # uploaded again from the pin (the bytes this upload hashed).
            if blob.pin is None:
                raise
            await self._bucket.put_file(blob.pin, blob.sha256)

    async def size_of(self, uri: str) -> int:
        if not self._bucket.owns(uri):
            return await self._staging.size_of(uri)
        return await self._bucket.size_of(uri)

    async def open(self, uri: str) -> AsyncIterator[bytes]:
        if not self._bucket.owns(uri):
            return await self._staging.open(uri)
        return _chunks_of(await self._bucket.get(uri))

    async def open_range(self, uri: str, start: int, end: int) -> AsyncIterator[bytes]:
        """One ranged GET, so a player's seek costs one request."""
        if not self._bucket.owns(uri):
            return await self._staging.open_range(uri, start, end)
        if end <= start:  # S3 refuses an empty range
            return _chunks_of_nothing()
        return _chunks_of(await self._bucket.get(uri, (start, end)))

    @contextlib.asynccontextmanager
    async def local_file(self, uri: str, max_download_bytes: int) -> AsyncIterator[Path]:
        if not self._bucket.owns(uri):
            async with self._staging.local_file(uri, max_download_bytes) as path:
                yield path
            return
        result = await self._bucket.get(uri)
        if result.meta["size"] > max_download_bytes:
            raise BlobTooLarge(max_download_bytes)
        fd, name = tempfile.mkstemp(prefix="mxw-audio-", suffix=".bin")
        path = Path(name)
        try:
            with open(fd, "wb") as fh:  # noqa: ASYNC230  # chunks are written as they arrive
                async for chunk in _chunks_of(result):
                    await asyncio.to_thread(fh.write, chunk)
            yield path
        finally:
            path.unlink(missing_ok=True)

    async def delete(self, uri: str) -> None:
        if not self._bucket.owns(uri):
            await self._staging.delete(uri)
            return
        await self._bucket.delete(uri)
        sha = uri.rsplit("/", 1)[-1]  # and its staging copy, if still there
        await self._staging.delete((self._staging.root / sha[:2] / sha).as_uri())

    def remove_abandoned_parts(self, min_age_s: float = 30.0) -> int:
        return self._staging.remove_abandoned_parts(min_age_s)

    def remove_stale_pins(self, min_age_s: float) -> int:
        return self._staging.remove_stale_pins(min_age_s)

    def stored_uris(self, min_age_s: float) -> list[str]:
        """The staging copies (the bucket's objects are not listed: see docs/architecture.md)."""
        return self._staging.stored_uris(min_age_s)


async def _chunks_of_nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an empty async generator


def open_blob_store(root: Path, s3_url: str | None, *, readonly: bool = False) -> BlobStore:
    """The store a service's settings name: S3 (`MXW_BLOB_STORE_URL=s3://bucket/prefix`,
    staging in `MXW_BLOB_ROOT`) when the URL is set and not empty (compose passes "" through),
    else the local directory. `readonly`: the service only reads (the directory is not made)."""
    staging = LocalBlobStore(root, create=not readonly)
    return S3BlobStore(s3_url, staging) if s3_url else staging
