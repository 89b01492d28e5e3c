"""S3BlobStore against a real S3-protocol server (moto) on 127.0.0.1."""

import hashlib
import os

import boto3
import pytest
from mxw_shared.blobs import (
    BlobNotFound,
    BlobTooLarge,
    S3BackedBlobStore,
    S3BlobStore,
    UnsupportedUri,
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


async def test_a_multipart_stream_is_stored_content_addressed_and_read_back(endpoint):
    store = S3BlobStore(f"s3://{BUCKET}/big")
    data = os.urandom(11 * 1024 * 1024 + 7)  # over obstore's 5 MiB part size: multipart
    sha = hashlib.sha256(data).hexdigest()
    blob = await store.put_stream(pieces(data), max_bytes=len(data))
    assert (blob.sha256, blob.size_bytes) == (sha, len(data))
    assert blob.uri == f"s3://{BUCKET}/big/{sha[:2]}/{sha}"
    assert keys(endpoint) == [f"big/{sha[:2]}/{sha}"]  # the part is gone
    out = bytearray()
    assert await store.read_into(blob.uri, out.extend, max_bytes=len(data)) == len(data)
    assert bytes(out) == data


async def test_over_the_limit_fails_while_streaming_and_leaves_nothing(endpoint):
    store = S3BlobStore(f"s3://{BUCKET}/limit")
    with pytest.raises(BlobTooLarge):
        await store.put_stream(pieces(os.urandom(7 * 1024 * 1024)), max_bytes=6 * 1024 * 1024)
    assert not [k for k in keys(endpoint) if k.startswith("limit/")]


async def test_reads_are_confined_to_the_store_and_missing_objects_say_so(endpoint):
    store = S3BlobStore(f"s3://{BUCKET}/audio")
    blob = await store.put_bytes(b"hello")
    for outside in (
        f"s3://other-bucket/audio/{blob.sha256[:2]}/{blob.sha256}",
        f"s3://{BUCKET}/elsewhere/x",
        f"s3://{BUCKET}/audio/../elsewhere/x",
        blob.uri.replace("s3://", "file:///"),
    ):
        with pytest.raises(UnsupportedUri):
            await store.read_into(outside, print, max_bytes=100)
    with pytest.raises(BlobNotFound):
        await store.read_into(f"s3://{BUCKET}/audio/00/none", print, max_bytes=100)
    with pytest.raises(BlobTooLarge):
        await store.read_into(blob.uri, print, max_bytes=4)
    await store.delete(blob.uri)
    with pytest.raises(BlobNotFound):
        await store.read_into(blob.uri, print, max_bytes=100)


def test_only_s3_urls_configure_a_store():
    for bad in ("file:///tmp/x", "s3://", "http://bucket/prefix"):
        with pytest.raises(UnsupportedUri):
            S3BlobStore(bad)


async def test_the_s3_backed_store_stages_locally_and_references_the_object(endpoint, tmp_path):
    store = S3BackedBlobStore(tmp_path, f"s3://{BUCKET}/gw")
    data = os.urandom(300 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    blob = await store.put_stream(pieces(data), max_bytes=len(data))
    assert blob.uri == f"s3://{BUCKET}/gw/{sha[:2]}/{sha}"
    assert blob.path.read_bytes() == data  # the staging copy the gateway probes
    assert f"gw/{sha[:2]}/{sha}" in keys(endpoint)
    # The staging copy is referenced by no job: the janitor sees it as a local orphan.
    assert store.stored_uris(min_age_s=-1) == [blob.path.as_uri()]
    store.delete(blob.uri)
    assert f"gw/{sha[:2]}/{sha}" not in keys(endpoint)
    assert not blob.path.exists()
