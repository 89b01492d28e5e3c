"""S3BlobStore against a real S3-protocol server (moto) on 127.0.0.1."""

import hashlib
import os

import boto3
import pytest
from mxw_shared.blobs import (
    BlobNotFound,
    BlobTooLarge,
    LocalBlobStore,
    S3BlobStore,
    UnsupportedUri,
    open_blob_store,
)

BUCKET = "mxw-audio"


@pytest.fixture(scope="module")
def endpoint(s3_server):
    with s3_server(BUCKET) as url:
        yield url


def keys(endpoint: str) -> list[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=BUCKET)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


async def pieces(data: bytes, size: int = 64 * 1024):
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(chunks) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_a_multipart_upload_is_stored_content_addressed_and_read_back(endpoint, tmp_path):
    store = S3BlobStore(f"s3://{BUCKET}/big", LocalBlobStore(tmp_path))
    data = os.urandom(11 * 1024 * 1024 + 7)  # over obstore's 5 MiB part size: multipart
    sha = hashlib.sha256(data).hexdigest()
    blob = await store.put_stream(pieces(data), max_bytes=len(data))
    assert (blob.sha256, blob.size_bytes) == (sha, len(data))
    assert blob.uri == f"s3://{BUCKET}/big/{sha[:2]}/{sha}"
    assert keys(endpoint) == [f"big/{sha[:2]}/{sha}"]  # nothing else in the bucket
    assert await store.size_of(blob.uri) == len(data)
    assert await read_all(await store.open(blob.uri)) == data
    # What a player's seek asks for, across a part boundary.
    start, end = 5 * 1024 * 1024 - 3, 5 * 1024 * 1024 + 5
    assert await read_all(await store.open_range(blob.uri, start, end)) == data[start:end]


async def test_over_the_limit_fails_while_streaming_and_leaves_nothing(endpoint, tmp_path):
    store = S3BlobStore(f"s3://{BUCKET}/limit", LocalBlobStore(tmp_path))
    with pytest.raises(BlobTooLarge):
        await store.put_stream(pieces(os.urandom(7 * 1024 * 1024)), max_bytes=6 * 1024 * 1024)
    assert not [k for k in keys(endpoint) if k.startswith("limit/")]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_reads_are_confined_to_the_store_and_missing_objects_say_so(endpoint, tmp_path):
    store = S3BlobStore(f"s3://{BUCKET}/audio", LocalBlobStore(tmp_path / "staging"))
    blob = await store.put_bytes(b"hello")
    for outside in (
        f"s3://other-bucket/audio/{blob.sha256[:2]}/{blob.sha256}",
        f"s3://{BUCKET}/elsewhere/x",
        f"s3://{BUCKET}/audio/../elsewhere/x",
        blob.uri.replace("s3://", "file:///"),
    ):
        assert not store.owns(outside)
        with pytest.raises(UnsupportedUri):
            await store.size_of(outside)
        with pytest.raises(UnsupportedUri):
            async with store.local_file(outside, max_download_bytes=100):
                pass
    missing = f"s3://{BUCKET}/audio/00/none"
    assert store.owns(missing)
    with pytest.raises(BlobNotFound, match="no object at"):
        async with store.local_file(missing, max_download_bytes=100):
            pass
    with pytest.raises(BlobTooLarge):
        async with store.local_file(blob.uri, max_download_bytes=4):
            pass
    async with store.local_file(blob.uri, max_download_bytes=100) as path:
        assert path.read_bytes() == b"hello"
        assert not path.is_relative_to(tmp_path)  # a download, not the staging copy
    assert not path.exists()  # removed on exit
    await store.delete(blob.uri)
    with pytest.raises(BlobNotFound):
        await store.open(blob.uri)


def test_only_s3_urls_configure_a_store(tmp_path):
    for bad in ("file:///tmp/x", "s3://", "http://bucket/prefix"):
        with pytest.raises(UnsupportedUri):
            S3BlobStore(bad, LocalBlobStore(tmp_path))


async def test_uploads_are_staged_locally_and_reference_the_object(endpoint, tmp_path):
    store = open_blob_store(tmp_path, f"s3://{BUCKET}/gw")
    assert isinstance(store, S3BlobStore)
    assert isinstance(open_blob_store(tmp_path, ""), LocalBlobStore)  # compose passes "" on
    data = os.urandom(300 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    blob = await store.put_stream(pieces(data), max_bytes=len(data))
    assert blob.uri == f"s3://{BUCKET}/gw/{sha[:2]}/{sha}"
    assert blob.path.read_bytes() == data  # the staging copy the gateway probes
    assert blob.pin is not None
    assert blob.pin.exists()  # kept until the job's rows commit
    assert f"gw/{sha[:2]}/{sha}" in keys(endpoint)
    # The staging copy is referenced by no job: the janitor sees it as a local orphan, and
    # deletes it through the same store.
    staged = blob.path.as_uri()
    assert store.stored_uris(min_age_s=-1) == [staged]
    assert store.owns(staged)
    await store.delete(blob.uri)
    assert f"gw/{sha[:2]}/{sha}" not in keys(endpoint)
    assert not blob.path.exists()


async def test_files_of_the_staging_directory_are_still_served(endpoint, tmp_path):
    """A job stored before the deployment moved to S3 names a file:// blob of the directory
    that is now the staging one: it is read and deleted through the S3 store."""
    before = await LocalBlobStore(tmp_path).put_bytes(b"stored before the move to S3")
    store = S3BlobStore(f"s3://{BUCKET}/moved", LocalBlobStore(tmp_path))
    assert store.owns(before.uri)
    assert await store.size_of(before.uri) == before.size_bytes
    assert await read_all(await store.open_range(before.uri, 7, 13)) == b"before"
    async with store.local_file(before.uri, max_download_bytes=1) as path:
        assert path == before.path  # on this disk already: used where it lies
    await store.delete(before.uri)
    assert not before.path.exists()
