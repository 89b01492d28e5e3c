import hashlib
import time

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


def test_abandoned_parts_are_removed_and_live_ones_kept(tmp_path):
    import fcntl
    import os

    store = LocalBlobStore(tmp_path)
    abandoned = tmp_path / "tmp" / "dead.part"
    abandoned.write_bytes(b"half an upload")
    live = tmp_path / "tmp" / "live.part"
    young = tmp_path / "tmp" / "young.part"
    young.write_bytes(b"just opened")
    old = time.time() - 120
    with live.open("wb") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)  # as put_stream holds it while writing
        for path in (abandoned, live):
            os.utime(path, (old, old))
        assert store.remove_abandoned_parts(min_age_s=30) == 1
        assert not abandoned.exists()
        assert live.exists()
        assert young.exists()
    # The writer is gone now: its part is abandoned too.
    os.utime(live, (old, old))
    assert store.remove_abandoned_parts(min_age_s=30) == 1
    assert not live.exists()


async def test_stored_uris_lists_only_settled_blobs(tmp_path):
    store = LocalBlobStore(tmp_path)
    blob = await store.put_bytes(b"settled")
    assert store.stored_uris(min_age_s=3600) == []
    assert store.stored_uris(min_age_s=-60) == [blob.uri]
