"""Deleting a job removes everything derived from it, and it stays deleted."""

from __future__ import annotations

import asyncio
import uuid

from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs import repository
from mxw_gateway.jobs.admission import create_job
from mxw_gateway.settings import GatewaySettings
from mxw_shared.blobs import LocalBlobStore, local_path
from mxw_shared.contracts import AudioUploaded, Envelope, JobOptions, Stage
from mxw_shared.pipeline import StageRunner
from mxw_shared.settings import CommonSettings


async def finished_job(upload_short, client, headers, db, data: bytes) -> uuid.UUID:
    response = await upload_short(client, headers, filename="d.ogg", data=data)
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["id"])
    for stage in ("transcribe", "chunk", "embed"):
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state) VALUES ($1, $2, 'done')", job_id, stage
        )
    await db.execute(
        "INSERT INTO transcripts (job_id, duration_s, model, text) VALUES ($1, 3, 'tiny.en', 'x')",
        job_id,
    )
    chunk = await db.fetchval(
        "INSERT INTO chunks (job_id, owner_id, idx, text, start_s, end_s, method)"
        " SELECT id, owner_id, 0, 'x', 0, 3, 'local' FROM jobs WHERE id = $1 RETURNING id",
        job_id,
    )
    await db.execute(
        "INSERT INTO chunk_embeddings (chunk_id, job_id, owner_id, model, embedding)"
        " SELECT $1, $2, owner_id, 'm', array_fill(0.1, ARRAY[384])::vector FROM jobs"
        " WHERE id = $2",
        chunk,
        job_id,
    )
    return job_id


async def test_delete_removes_job_results_and_audio(client, token, db, upload_short, short_ogg):
    headers = token("deleter")
    data = short_ogg + b"\x01" * 7  # audio no other test stores
    job_id = await finished_job(upload_short, client, headers, db, data)
    uri = await db.fetchval("SELECT audio_uri FROM jobs WHERE id = $1", job_id)
    assert local_path(uri).exists()

    assert (await client.delete(f"/jobs/{job_id}", headers=token("stranger"))).status_code == 404
    response = await client.delete(f"/jobs/{job_id}", headers=headers)
    assert response.status_code == 204

    assert (await client.get(f"/jobs/{job_id}", headers=headers)).status_code == 404
    for table, column in (
        ("jobs", "id"),
        ("job_stages", "job_id"),
        ("job_events", "job_id"),
        ("transcripts", "job_id"),
        ("chunks", "job_id"),
        ("chunk_embeddings", "job_id"),
    ):
        count = await db.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", job_id)
        assert count == 0, table
    assert await db.fetchval("SELECT count(*) FROM blobs WHERE uri = $1", uri) == 0
    assert not local_path(uri).exists()
    assert (await client.delete(f"/jobs/{job_id}", headers=headers)).status_code == 404


async def test_audio_shared_with_another_job_is_kept(client, token, db, upload_short, short_ogg):
    headers = token("deleter")
    data = short_ogg + b"\x02" * 7
    first = await finished_job(upload_short, client, headers, db, data)
    second = await finished_job(
        upload_short, client, headers, db, data
    )  # force: same bytes, second job
    uri = await db.fetchval("SELECT audio_uri FROM jobs WHERE id = $1", first)
    assert (await client.delete(f"/jobs/{first}", headers=headers)).status_code == 204
    assert local_path(uri).exists()
    assert (await client.get(f"/jobs/{second}/audio", headers=headers)).status_code == 200


async def test_running_job_cannot_be_deleted(client, token, db, upload_short):
    headers = token("deleter")
    response = await upload_short(client, headers, filename="d.ogg")
    job_id = response.json()["id"]
    assert (await client.delete(f"/jobs/{job_id}", headers=headers)).status_code == 409
    assert (await client.post(f"/jobs/{job_id}/cancel", headers=headers)).status_code == 200
    assert (await client.delete(f"/jobs/{job_id}", headers=headers)).status_code == 204


async def test_a_late_event_does_not_bring_a_deleted_job_back(
    client, token, db, infra, upload_short, short_ogg
):
    headers = token("deleter")
    job_id = await finished_job(upload_short, client, headers, db, short_ogg + b"\x03" * 7)
    event = AudioUploaded(job_id=job_id, owner_id="deleter", audio_uri="file:///x", sha256="0" * 64)
    assert (await client.delete(f"/jobs/{job_id}", headers=headers)).status_code == 204

    adopted: list[uuid.UUID] = []

    async def adopt(conn, envelope, data):  # what the transcriber does for unknown jobs
        adopted.append(data.job_id)
        raise AssertionError("a deleted job must not be adopted")

    async def work(*_):
        raise AssertionError("no work for a deleted job")

    runner = StageRunner(
        pool=db,
        settings=infra.settings(CommonSettings, "transcriber-delete-test"),
        stage=Stage.transcribe,
        work=work,
        adopt_job=adopt,
    )
    headers_ = Envelope.for_event(event, source="another-system").to_headers()
    assert await runner.handle(headers_, event.model_dump_json().encode()) == "deleted"
    assert adopted == []
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE id = $1", job_id) == 0


async def test_l5_an_upload_whose_file_a_concurrent_delete_removed_keeps_it(
    client, token, db, infra, upload_short, short_ogg
):
    data = short_ogg + b"\x05" * 7
    first = await finished_job(upload_short, client, token("l5-a"), db, data)
    # Another user's upload of the same bytes, stored but not yet committed.
    store = LocalBlobStore(infra.root / "gateway-blobs")
    blob = await store.put_bytes(data)
    # The first job is deleted in that window: nothing references the file yet.
    assert (await client.delete(f"/jobs/{first}", headers=token("l5-a"))).status_code == 204
    assert not blob.path.exists()
    settings = infra.settings(GatewaySettings, "gateway", blob_root=store.root)
    user = CurrentUser(sub="l5-b", is_admin=False, name=None, email=None)
    job_id, created = await create_job(
        db, settings, user, blob, "audio/ogg", "b.ogg", JobOptions(), force=True, store=store
    )
    assert created
    assert blob.path.read_bytes() == data  # put back from the upload's pin
    assert blob.pin is not None
    assert not blob.pin.exists()  # and the pin let go
    audio = await client.get(f"/jobs/{job_id}/audio", headers=token("l5-b"))
    assert audio.status_code == 200
    assert audio.content == data


async def test_l5_a_delete_waits_for_an_upload_commit_of_the_same_bytes(
    client, token, db, infra, wait_for, upload_short, short_ogg
):
    data = short_ogg + b"\x06" * 7
    first = await finished_job(upload_short, client, token("l5-c"), db, data)
    uri = await db.fetchval("SELECT audio_uri FROM jobs WHERE id = $1", first)
    store = LocalBlobStore(infra.root / "gateway-blobs")
    blob = await store.put_bytes(data)
    async with db.acquire() as conn:
        # An upload of the same bytes by another user commits its rows under the blob lock.
        async with conn.transaction():
            await repository.lock_blob(conn, blob.sha256)
            await repository.ensure_blob(conn, "l5-d", blob, "audio/ogg")
            deleting = asyncio.create_task(client.delete(f"/jobs/{first}", headers=token("l5-c")))
            await wait_for(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                predicate=lambda waiting: waiting >= 1,
            )
            assert not deleting.done()
        assert (await deleting).status_code == 204
    assert blob.uri == uri
    assert blob.path.read_bytes() == data  # still referenced by the other user's blob row
