import hashlib

import pytest
from mxw_shared.blobs import BlobTooLarge, LocalBlobStore, UnsupportedUri, local_path


async def chunks(*parts: bytes):
    for part in parts:
        yield part


async def test_stream_is_hashed_and_stored_content_addressed(tmp_path):
    store = LocalBlobStore(tmp_path)
    blob = await store.put_stream(chunks(b"abc", b"def"), max_bytes=100)
    assert blob.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert blob.size_bytes == 6
    assert local_path(blob.uri).read_bytes() == b"abcdef"
    assert blob.path == tmp_path / blob.sha256[:2] / blob.sha256


async def test_over_the_limit_fails_while_streaming_and_leaves_nothing(tmp_path):
    store = LocalBlobStore(tmp_path)
    consumed = []

    async def endless():
        for i in range(1000):
            consumed.append(i)
            yield b"x" * 1024

    with pytest.raises(BlobTooLarge):
        await store.put_stream(endless(), max_bytes=10 * 1024)
    assert len(consumed) == 11  # stopped reading right after the limit
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_only_local_file_uris_map_to_paths():
    assert str(local_path("file:///data/a%20b.wav")) == "/data/a b.wav"
    with pytest.raises(UnsupportedUri):
        local_path("s3://bucket/key")
    with pytest.raises(UnsupportedUri):
        local_path("file://otherhost/etc/passwd")


async def test_large_stream_in_small_chunks_is_hashed_and_written_whole(tmp_path):
    data = bytes(range(256)) * (14 * 1024)  # 3.5 MiB: several 1 MiB blocks and a tail
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    blob = await LocalBlobStore(tmp_path).put_stream(chunks(*pieces), max_bytes=len(data))
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.path.read_bytes() == data
