"""MXW_BLOB_STORE_URL=s3://…: uploads land in a real S3-protocol server (moto on
127.0.0.1), jobs and events name the s3:// object, and deleting the job removes it."""

from __future__ import annotations

import hashlib
import uuid

import boto3
import pytest
from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs.admission import create_job
from mxw_gateway.settings import GatewaySettings
from mxw_shared.blobs import LocalBlobStore, S3BlobStore
from mxw_shared.contracts import JobOptions
from mxw_shared.topics import AUDIO_UPLOADED

BUCKET = "mxw-gateway"
STAGING = "gateway-s3-staging"


@pytest.fixture(scope="module")
def endpoint(s3_server):
    with s3_server(BUCKET) as url:
        yield url


@pytest.fixture(scope="module")
async def client(start_gateway, infra, endpoint):
    async with start_gateway(
        blob_root=infra.root / STAGING, blob_store_url=f"s3://{BUCKET}/audio"
    ) as c:
        yield c


def keys(endpoint: str) -> set[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=BUCKET)
    return {obj["Key"] for obj in listing.get("Contents", [])}


async def test_an_upload_is_stored_in_s3_and_the_job_names_the_object(
    client, endpoint, token, db, upload_short, short_ogg, read_topic
):
    headers = token("s3-user")
    data = short_ogg + b"\x02" * 5  # audio no other test stores
    sha = hashlib.sha256(data).hexdigest()
    response = await upload_short(client, headers, data=data)
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["id"])

    uri = await db.fetchval("SELECT audio_uri FROM jobs WHERE id = $1", job_id)
    assert uri == f"s3://{BUCKET}/audio/{sha[:2]}/{sha}"
    assert f"audio/{sha[:2]}/{sha}" in keys(endpoint)
    ((_, event),) = await read_topic(AUDIO_UPLOADED, job_id)
    assert event["audio_uri"] == uri

    for stage in ("transcribe", "chunk", "embed"):  # finished: a running job is not deleted
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state) VALUES ($1, $2, 'done')"
            " ON CONFLICT (job_id, stage) DO UPDATE SET state = 'done'",
            job_id,
            stage,
        )
    assert (await client.delete(f"/jobs/{job_id}", headers=headers)).status_code == 204
    assert f"audio/{sha[:2]}/{sha}" not in keys(endpoint)


async def test_a_rejected_upload_leaves_no_object(client, endpoint, token, upload_short):
    before = keys(endpoint)
    response = await upload_short(client, token("s3-user"), data=b"not audio at all\n" * 40)
    assert response.status_code == 415
    assert response.headers["content-type"].startswith("application/problem+json")
    assert keys(endpoint) == before


async def test_audio_in_s3_is_streamed_to_its_owner_with_ranges(
    client, endpoint, token, upload_short, short_ogg
):
    headers = token("s3-listener")
    data = short_ogg + b"\x03" * 7  # audio no other test stores
    response = await upload_short(client, headers, data=data)
    assert response.status_code == 202, response.text
    url = f"/jobs/{response.json()['id']}/audio"

    whole = await client.get(url, headers=headers)
    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(len(data))
    assert whole.headers["content-disposition"].startswith("inline")

    # Seeking: what a browser's audio element asks for when the link says #t=<seconds>.
    middle = await client.get(url, headers={**headers, "Range": "bytes=100-199"})
    assert middle.status_code == 206
    assert middle.content == data[100:200]
    assert middle.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert middle.headers["content-length"] == "100"
    tail = await client.get(url, headers={**headers, "Range": "bytes=-10"})
    assert (tail.status_code, tail.content) == (206, data[-10:])
    rest = await client.get(url, headers={**headers, "Range": f"bytes={len(data) - 5}-"})
    assert (rest.status_code, rest.content) == (206, data[-5:])

    past = await client.get(url, headers={**headers, "Range": f"bytes={len(data)}-"})
    assert past.status_code == 416
    assert past.headers["content-type"].startswith("application/problem+json")
    assert past.headers["content-range"] == f"bytes */{len(data)}"

    # Someone else's job does not exist for them.
    assert (await client.get(url, headers=token("s3-stranger"))).status_code == 404


async def test_l5_an_upload_whose_object_a_concurrent_delete_removed_keeps_it(
    client, endpoint, token, db, infra, upload_short, short_ogg
):
    data = short_ogg + b"\x04" * 7  # audio no other test stores
    sha = hashlib.sha256(data).hexdigest()
    response = await upload_short(client, token("s3-l5-a"), data=data)
    assert response.status_code == 202, response.text
    first = uuid.UUID(response.json()["id"])
    for stage in ("transcribe", "chunk", "embed"):
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state) VALUES ($1, $2, 'done')"
            " ON CONFLICT (job_id, stage) DO UPDATE SET state = 'done'",
            first,
            stage,
        )
    # Another user's upload of the same bytes, stored (staged and put) but not yet committed.
    store = S3BlobStore(f"s3://{BUCKET}/audio", LocalBlobStore(infra.root / STAGING))
    blob = await store.put_bytes(data)
    # The first job is deleted in that window: nothing references the object yet.
    assert (await client.delete(f"/jobs/{first}", headers=token("s3-l5-a"))).status_code == 204
    assert f"audio/{sha[:2]}/{sha}" not in keys(endpoint)
    settings = infra.settings(
        GatewaySettings,
        "gateway",
        blob_root=infra.root / STAGING,
        blob_store_url=f"s3://{BUCKET}/audio",
    )
    user = CurrentUser(sub="s3-l5-b", is_admin=False, name=None, email=None)
    job_id, created = await create_job(
        db, settings, user, blob, "audio/ogg", "b.ogg", JobOptions(), force=True, store=store
    )
    assert created
    assert f"audio/{sha[:2]}/{sha}" in keys(endpoint)  # put back from the upload's pin
    audio = await client.get(f"/jobs/{job_id}/audio", headers=token("s3-l5-b"))
    assert audio.status_code == 200
    assert audio.content == data
