import hashlib
import os
import time

import pytest
from mxw_shared import blobs
from mxw_shared.blobs import (
    ALLOWED_AUDIO_CONTENT_TYPES,
    BlobTooLarge,
    LocalBlobStore,
    OutsideBlobStore,
    UnsupportedUri,
    local_path,
    resolve_in_root,
)


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


def test_h1_resolve_in_root_resolves_before_checking(tmp_path):
    root = tmp_path / "blobs"
    root.mkdir()
    (root / "ab").mkdir()
    inside = root / "ab" / "cd"
    inside.write_bytes(b"x")
    outside = tmp_path / "secret"
    outside.write_bytes(b"key")
    assert resolve_in_root(inside.as_uri(), root) == inside.resolve()
    # `..` that leaves the root passed Path.is_relative_to on the unresolved path.
    escape = f"{root.as_uri()}/../secret"
    assert local_path(escape).is_relative_to(root)
    (root / "ab" / "link").symlink_to(outside)
    for uri in (escape, outside.as_uri(), (root / "ab" / "link").as_uri(), "file:///etc/passwd"):
        with pytest.raises(OutsideBlobStore, match="outside the blob store"):
            resolve_in_root(uri, root)
    with pytest.raises(UnsupportedUri):
        resolve_in_root("https://example.org/a.ogg", root)


async def test_h1_delete_never_removes_a_file_outside_the_store(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    outside = tmp_path / "secret"
    outside.write_bytes(b"key")
    (store.root / "ab").mkdir()
    link = store.root / "ab" / "link"
    link.symlink_to(outside)
    for uri in (f"{store.root.as_uri()}/../secret", outside.as_uri(), link.as_uri()):
        await store.delete(uri)
        assert outside.read_bytes() == b"key"
    blob = await store.put_bytes(b"audio")
    await store.delete(blob.uri)
    assert not blob.path.exists()


def test_h1_allowed_audio_content_types_are_audio_or_plain_bytes():
    assert "audio/ogg" in ALLOWED_AUDIO_CONTENT_TYPES
    assert "text/html" not in ALLOWED_AUDIO_CONTENT_TYPES
    assert all(
        t.startswith("audio/") or t == "application/octet-stream"
        for t in ALLOWED_AUDIO_CONTENT_TYPES
    )


async def test_the_janitor_at_the_worst_moment_never_takes_a_finished_upload(tmp_path, monkeypatch):
    """The janitor (abandoned after 0 s, as the fault suite runs it) sweeps just before the
    finished part is pinned and renamed: the writer still holds its lock, so it is kept."""
    store = LocalBlobStore(tmp_path)
    real_link = os.link
    swept: list[int] = []

    def janitor_then_link(src, dst):
        swept.append(store.remove_abandoned_parts(min_age_s=0))
        real_link(src, dst)

    monkeypatch.setattr(blobs.os, "link", janitor_then_link)
    blob = await store.put_bytes(b"a whole upload")

    assert swept == [0]
    assert blob.path.read_bytes() == b"a whole upload"
    assert not list((tmp_path / "tmp").glob("*.part"))
