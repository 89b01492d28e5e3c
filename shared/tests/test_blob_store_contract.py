"""The BlobStore protocol, one test for both stores: the local directory and S3 (against a
real S3-protocol server, moto, on 127.0.0.1). Whatever a caller does through the protocol
behaves the same on either."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mxw_shared.blobs import (
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    LocalBlobStore,
    S3BlobStore,
    UnsupportedUri,
    release_blob,
)

BUCKET = "mxw-contract"
DATA = bytes(range(256)) * 20  # 5120 bytes, each offset readable from its value


@pytest.fixture(scope="module")
def endpoint(s3_server) -> Iterator[str]:
    with s3_server(BUCKET) as url:
        yield url


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    local = LocalBlobStore(tmp_path / "blobs")
    if request.param == "local":
        return local
    request.getfixturevalue("endpoint")
    return S3BlobStore(f"s3://{BUCKET}/{tmp_path.name}", local)


async def pieces(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_put_open_range_size_and_delete(store: BlobStore) -> None:
    blob = await store.put_stream(pieces(DATA), max_bytes=len(DATA))
    try:
        assert blob.sha256 == hashlib.sha256(DATA).hexdigest()
        assert blob.size_bytes == len(DATA)
        assert blob.uri.endswith(f"/{blob.sha256[:2]}/{blob.sha256}")  # content-addressed
        assert blob.path.read_bytes() == DATA  # a local file to probe
        assert store.owns(blob.uri)
        assert await store.size_of(blob.uri) == len(DATA)
        assert await read_all(await store.open(blob.uri)) == DATA
        assert await read_all(await store.open_range(blob.uri, 1000, 2500)) == DATA[1000:2500]
        assert await read_all(await store.open_range(blob.uri, 5000, 5120)) == DATA[5000:]
        assert await read_all(await store.open_range(blob.uri, 7, 7)) == b""
        async with store.local_file(blob.uri, max_download_bytes=len(DATA)) as path:
            assert path.read_bytes() == DATA
        # The same bytes again: the same blob.
        again = await store.put_bytes(DATA)
        release_blob(again)
        assert again.uri == blob.uri
    finally:
        release_blob(blob)
    await store.delete(blob.uri)
    assert store.owns(blob.uri)  # still the store's URI, just not stored
    with pytest.raises(BlobNotFound):
        await store.size_of(blob.uri)
    with pytest.raises(BlobNotFound):
        await store.open(blob.uri)
    with pytest.raises(BlobNotFound):
        await store.open_range(blob.uri, 0, 10)
    with pytest.raises(BlobNotFound):
        async with store.local_file(blob.uri, max_download_bytes=len(DATA)):
            pass
    await store.delete(blob.uri)  # deleting twice is harmless


async def test_over_the_limit_raises_while_streaming(store: BlobStore) -> None:
    with pytest.raises(BlobTooLarge):
        await store.put_stream(pieces(DATA), max_bytes=len(DATA) - 1)
    assert store.stored_uris(min_age_s=-60) == []


async def test_a_foreign_uri_is_not_owned_read_or_deleted(store: BlobStore, tmp_path: Path) -> None:
    foreign_file = tmp_path / "elsewhere" / ("ab" * 32)
    foreign_file.parent.mkdir()
    foreign_file.write_bytes(b"not the store's")
    for foreign in (
        foreign_file.as_uri(),
        f"s3://another-bucket/{tmp_path.name}/ab/{'ab' * 32}",
        "https://example.org/a.ogg",
        "ftp://example.org/a.ogg",
    ):
        assert not store.owns(foreign), foreign
        with pytest.raises(UnsupportedUri):
            await store.size_of(foreign)
        with pytest.raises(UnsupportedUri):
            await store.open(foreign)
        with pytest.raises(UnsupportedUri):
            await store.open_range(foreign, 0, 1)
        with pytest.raises(UnsupportedUri):
            async with store.local_file(foreign, max_download_bytes=100):
                pass
        await store.delete(foreign)  # never an error, and never deleted
    assert foreign_file.read_bytes() == b"not the store's"


async def test_restore_puts_back_a_blob_a_concurrent_deletion_removed(store: BlobStore) -> None:
    """L5: an upload stored its bytes, another job's deletion of the same content removed
    them before the upload's rows committed; the commit (under the blob's lock) restores."""
    blob = await store.put_bytes(DATA)
    try:
        await store.restore(blob)  # nothing removed: nothing to do
        assert await read_all(await store.open(blob.uri)) == DATA
        await store.delete(blob.uri)
        with pytest.raises(BlobNotFound):
            await store.size_of(blob.uri)
        await store.restore(blob)
        assert await read_all(await store.open(blob.uri)) == DATA
        assert blob.path.read_bytes() == DATA  # the local copy (what was probed) too
    finally:
        release_blob(blob)
    assert blob.pin is not None
    assert not blob.pin.exists()
