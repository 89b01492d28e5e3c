"""A job row whose audio URI names a file outside the blob store (adopted from another
system's event before adoption checked it, or written by hand) never makes the gateway read
or delete that file; audio is served only with an audio content type."""

from __future__ import annotations

import uuid

from mxw_shared.blobs import local_path


async def adopted_job(db, owner: str, uri: str, content_type: str = "audio/ogg") -> uuid.UUID:
    """A finished job as the transcriber's adoption wrote it from an event."""
    job_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO jobs (id, owner_id, filename, audio_uri, sha256, content_type, options)"
        " VALUES ($1, $2, 'x.ogg', $3, $4, $5, '{}'::jsonb)",
        job_id,
        owner,
        uri,
        "a" * 64,
        content_type,
    )
    for stage in ("transcribe", "chunk", "embed"):
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state) VALUES ($1, $2, 'failed')",
            job_id,
            stage,
        )
    return job_id


async def test_h1_audio_outside_the_blob_store_is_neither_served_nor_deleted(
    client, token, db, infra, tmp_path
):
    headers = token("h1-owner")
    secret = tmp_path / "dev-signing-key.pem"
    secret.write_text("-----BEGIN PRIVATE KEY-----\n")
    blob_root = infra.root / "gateway-blobs"
    # Absolute, and `..` out of the store: is_relative_to on the unresolved path passed this.
    escape = blob_root.as_uri() + "/.." * len(blob_root.parts) + secret.as_posix()
    assert local_path(escape).resolve() == secret.resolve()
    # A symlink inside the store that points out of it.
    link = blob_root / "ab" / ("b" * 64)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    for uri in (secret.as_uri(), escape, link.as_uri()):
        job_id = await adopted_job(db, "h1-owner", uri)
        audio = await client.get(f"/jobs/{job_id}/audio", headers=headers)
        assert audio.status_code == 409, (uri, audio.text)
        assert audio.headers["content-type"].startswith("application/problem+json")
        assert "BEGIN PRIVATE KEY" not in audio.text
        deleted = await client.delete(f"/jobs/{job_id}", headers=headers)
        assert deleted.status_code == 204, deleted.text
        assert secret.exists(), uri
    assert link.is_symlink()  # not followed, and not a blob the store deletes


async def test_h1_audio_is_served_only_with_an_audio_content_type(client, token, db, upload_short):
    headers = token("h1-types")
    uploaded = await upload_short(client, headers)
    assert uploaded.status_code == 202, uploaded.text
    uri = await db.fetchval("SELECT audio_uri FROM jobs WHERE id = $1", uploaded.json()["id"])
    job_id = await adopted_job(db, "h1-types", uri, content_type="text/html")
    audio = await client.get(f"/jobs/{job_id}/audio", headers=headers)
    assert audio.status_code == 200
    assert audio.headers["content-type"] == "application/octet-stream"
    served = await client.get(f"/jobs/{uploaded.json()['id']}/audio", headers=headers)
    assert served.headers["content-type"] == "audio/ogg"
