"""Where the transcriber reads an event's audio from: the one blob store it was started with
(its directory, and the S3 bucket when configured), or an http(s):// source; nothing else."""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

import pytest
from mxw_shared.audio_source import audio_file, check_adoptable
from mxw_shared.blobs import BlobStore, LocalBlobStore, open_blob_store
from mxw_shared.contracts import AudioUploaded
from mxw_shared.pipeline import PermanentError
from mxw_transcriber.settings import TranscriberSettings

BUCKET_URL = "s3://mxw-audio/blobs"


def event(uri: str, content_type: str | None = None) -> AudioUploaded:
    return AudioUploaded(
        job_id=uuid.uuid4(),
        owner_id="elsewhere",
        audio_uri=uri,
        sha256="a" * 64,
        content_type=content_type,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, root: Path) -> BlobStore:
    # As main.py builds it: read-only, so the directory is not made (a read-only volume).
    store = open_blob_store(root, BUCKET_URL if request.param == "s3" else None, readonly=True)
    assert not root.exists()
    return store


def test_events_naming_the_store_or_http_are_adopted_and_others_refused(
    store: BlobStore, root: Path, tmp_path: Path
) -> None:
    sha = "ab" * 32
    check_adoptable(event((root / sha[:2] / sha).as_uri()), store)
    check_adoptable(event("https://example.org/a.ogg", "audio/ogg"), store)
    refused = {
        "file:///etc/passwd": "outside the blob store",
        f"{root.as_uri()}/../secret": "outside the blob store",
        f"s3://another-bucket/blobs/ab/{sha}": "outside the blob store",
        "ftp://example.org/a.ogg": "not an http(s):// source",
    }
    for uri, reason in refused.items():
        with pytest.raises(PermanentError, match=re.escape(reason)):
            check_adoptable(event(uri), store)
    with pytest.raises(PermanentError, match="content type 'text/html'"):
        check_adoptable(event("https://example.org/a.ogg", "text/html"), store)


async def test_s3_uris_of_the_configured_bucket_only_with_an_s3_store(root: Path) -> None:
    uri = f"{BUCKET_URL}/ab/{'ab' * 32}"
    check_adoptable(event(uri), open_blob_store(root, BUCKET_URL, readonly=True))
    with pytest.raises(PermanentError, match="outside the blob store"):
        check_adoptable(event(uri), open_blob_store(root, None, readonly=True))


async def test_a_stored_file_is_read_where_it_lies(store: BlobStore, root: Path) -> None:
    data = b"audio bytes"
    blob = await LocalBlobStore(root).put_bytes(data)  # as the gateway stores it
    settings = TranscriberSettings(blob_root=root, download_max_bytes=1)
    async with audio_file(blob.uri, store, settings) as path:
        assert path == blob.path  # no copy, whatever download_max_bytes says
        assert hashlib.sha256(path.read_bytes()).hexdigest() == blob.sha256
    assert blob.path.exists()  # the stored file is not removed after the job
    missing = (root / "00" / ("0" * 64)).as_uri()
    for uri, reason in {missing: "audio not found at", "ftp://example.org/a.ogg": "http"}.items():
        with pytest.raises(PermanentError, match=re.escape(reason)):
            async with audio_file(uri, store, settings):
                pass
