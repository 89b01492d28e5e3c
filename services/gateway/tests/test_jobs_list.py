"""Listing jobs with filters, and the per-job summary, on the real database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest


@pytest.fixture(scope="session")
def job_named(upload_short):
    async def upload(client, headers, filename: str) -> uuid.UUID:
        response = await upload_short(client, headers, filename=filename)
        assert response.status_code == 202, response.text
        return uuid.UUID(response.json()["id"])

    return upload


async def set_stages(db, job_id, **states: str) -> None:
    for stage, state in states.items():
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state, metrics) VALUES ($1, $2, $3, $4)",
            job_id,
            stage,
            state,
            {
                "model": "tiny.en",
                "device": "cpu",
                "language": "en",
                "language_probability": 0.97,
                "audio_duration_s": 3.4,
                "queue_wait_s": 0.25,
                "real_time_factor": 0.08,
                "transcribe_s": 0.27,
                "unrelated": 1,
            }
            if stage == "transcribe"
            else {},
        )


async def names(client, headers, **params) -> list[str]:
    response = await client.get("/jobs", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return [j["filename"] for j in response.json()["items"]]


async def test_filters_by_state_name_and_time(client, token, db, job_named):
    headers = token(f"listing-{uuid.uuid4().hex[:6]}")
    done = await job_named(client, headers, "meeting 100% done.ogg")
    failed = await job_named(client, headers, "standup_failed.ogg")
    await job_named(client, headers, "queued.ogg")
    rerun = await job_named(client, headers, "rerun.ogg")
    await set_stages(db, done, transcribe="done", chunk="done", embed="done")
    await set_stages(db, failed, transcribe="failed")
    await set_stages(db, rerun, transcribe="done", chunk="done", embed="done")
    # Rerun from chunk (transitions.rerun): the next generation, chunk and embed reset.
    await db.execute("UPDATE jobs SET generation = 1 WHERE id = $1", rerun)
    await db.execute(
        "DELETE FROM job_stages WHERE job_id = $1 AND stage IN ('chunk', 'embed')", rerun
    )

    assert await names(client, headers, state="done") == ["meeting 100% done.ogg"]
    assert set(await names(client, headers, state=["failed", "queued"])) == {
        "standup_failed.ogg",
        "queued.ogg",
    }
    assert await names(client, headers, state="running") == ["rerun.ogg"]
    # LIKE wildcards in the search text are literal characters.
    assert await names(client, headers, filename="100%") == ["meeting 100% done.ogg"]
    assert await names(client, headers, filename="_FAILED") == ["standup_failed.ogg"]
    assert await names(client, headers, filename="%") == ["meeting 100% done.ogg"]
    now = datetime.now(UTC)
    assert (
        len(await names(client, headers, created_from=(now - timedelta(minutes=5)).isoformat()))
        == 4
    )
    assert await names(client, headers, created_to=(now - timedelta(minutes=5)).isoformat()) == []
    bad = await client.get("/jobs", headers=headers, params={"state": "sleeping"})
    assert bad.status_code == 422


async def test_job_view_summarises_the_transcription(client, token, db, job_named):
    headers = token("summary-user")
    job_id = await job_named(client, headers, "summary.ogg")
    await set_stages(db, job_id, transcribe="done")
    summary = (await client.get(f"/jobs/{job_id}", headers=headers)).json()["summary"]
    assert summary == {
        "language": "en",
        "language_probability": 0.97,
        "model": "tiny.en",
        "device": "cpu",
        "audio_duration_s": 3.4,
        "queue_wait_s": 0.25,
        "decode_s": None,
        "transcribe_s": 0.27,
        "real_time_factor": 0.08,
    }
