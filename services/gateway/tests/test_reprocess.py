"""Running a finished job again from a stage: a new generation announced by that stage's
input event, earlier results reused. Against the real Postgres and broker."""

from __future__ import annotations

import uuid

import pytest
from mxw_shared import topics


@pytest.fixture(scope="session")
def uploaded_job(upload_short):
    async def upload(client, headers) -> uuid.UUID:
        response = await upload_short(client, headers)
        assert response.status_code == 202, response.text
        return uuid.UUID(response.json()["id"])

    return upload


async def finish_stages(db, job_id: uuid.UUID, *, states: dict[str, str]) -> None:
    """Write what the stage services write when they finish (generation 0). A job that did
    not ask for speakers has its diarize stage done from the start of its run (as
    transitions.skip_not_requested writes it)."""
    for stage, state in {"diarize": "done", **states}.items():
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state, progress, started_at, finished_at,"
            " error, metrics) VALUES ($1, $2, $3, 1, now(), now(), $4, $5)",
            job_id,
            stage,
            state,
            "boom" if state == "failed" else None,
            {"requested": False} if stage == "diarize" and "diarize" not in states else {},
        )
    if states.get("transcribe") == "done":
        await db.execute(
            "INSERT INTO transcripts (job_id, language, duration_s, model, text)"
            " VALUES ($1, 'en', 3.4, 'tiny.en', 'The quick brown fox.')",
            job_id,
        )
        await db.execute(
            "INSERT INTO segments (job_id, idx, start_s, end_s, text) VALUES"
            " ($1, 0, 0, 1.5, 'The quick'), ($1, 1, 1.5, 3.4, 'brown fox.')",
            job_id,
        )
    if states.get("chunk") == "done":
        await db.execute(
            "INSERT INTO chunks (job_id, owner_id, idx, text, start_s, end_s, method)"
            " SELECT $1, owner_id, 0, 'The quick brown fox.', 0, 3.4, 'local' FROM jobs"
            " WHERE id = $1",
            job_id,
        )


async def test_rechunk_with_another_method_keeps_the_transcript(
    client, token, db, read_topic, uploaded_job
):
    headers = token("rita")
    job_id = await uploaded_job(client, headers)
    await finish_stages(db, job_id, states={"transcribe": "done", "chunk": "done", "embed": "done"})
    assert (await client.get(f"/jobs/{job_id}", headers=headers)).json()["state"] == "done"

    response = await client.post(
        f"/jobs/{job_id}/reprocess",
        headers=headers,
        json={"from": "chunk", "options": {"chunking": "fixed"}},
    )

    assert response.status_code == 202, response.text
    view = response.json()
    assert view["state"] == "running"
    assert view["options"]["chunking"] == "fixed"
    assert [(s["stage"], s["state"]) for s in view["stages"]] == [
        ("transcribe", "done"),
        ("diarize", "skipped"),  # not asked for
        ("chunk", "pending"),  # the previous run's rows no longer count
        ("embed", "pending"),
    ]
    (_, event), *_ = await read_topic(topics.TRANSCRIPT_READY, job_id)
    assert event["generation"] == 1
    assert event["options"]["chunking"] == "fixed"
    assert (event["segment_count"], event["duration_s"], event["model"]) == (2, 3.4, "tiny.en")
    # Not transcribed again: the upload's own audio.uploaded is the only one.
    assert len(await read_topic(topics.AUDIO_UPLOADED, job_id, count=2, timeout_s=2)) == 1
    history = await db.fetch(
        "SELECT state, message FROM job_events WHERE job_id = $1 ORDER BY id", job_id
    )
    assert (history[-1]["state"], history[-1]["message"]) == (
        "queued",
        "reprocessing from chunk (run 1)",
    )
    assert await db.fetchval("SELECT generation FROM jobs WHERE id = $1", job_id) == 1
    # The redone stages are reset, the kept one carried into the new run.
    rows = await db.fetch(
        "SELECT stage, state, generation FROM job_stages WHERE job_id = $1", job_id
    )
    # (The stage not asked for is marked again when the run starts, with its options.)
    assert {r["stage"]: (r["state"], r["generation"]) for r in rows} == {
        "transcribe": ("done", 1),
    }

    again = await client.post(f"/jobs/{job_id}/reprocess", headers=headers, json={"from": "chunk"})
    assert again.status_code == 409  # the new run has not finished


async def test_failed_job_can_be_run_again_from_the_start(
    client, token, db, read_topic, uploaded_job
):
    headers = token("rita")
    job_id = await uploaded_job(client, headers)
    await finish_stages(db, job_id, states={"transcribe": "failed"})

    refused = await client.post(
        f"/jobs/{job_id}/reprocess", headers=headers, json={"from": "chunk"}
    )
    assert refused.status_code == 409
    assert "transcribe" in refused.json()["detail"]

    response = await client.post(
        f"/jobs/{job_id}/reprocess",
        headers=headers,
        json={"from": "transcribe", "options": {"language": "en"}},
    )
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "queued"
    events = await read_topic(topics.AUDIO_UPLOADED, job_id, count=2)
    assert [e["generation"] for _, e in events] == [0, 1]
    assert events[-1][1]["options"]["language"] == "en"
    assert events[-1][1]["audio_uri"] == events[0][1]["audio_uri"]


async def test_reprocess_refuses_running_jobs_strangers_and_bad_input(
    client, token, db, uploaded_job
):
    headers = token("rita")
    job_id = await uploaded_job(client, headers)

    running = await client.post(
        f"/jobs/{job_id}/reprocess", headers=headers, json={"from": "embed"}
    )
    assert running.status_code == 409  # queued, not finished

    await finish_stages(db, job_id, states={"transcribe": "done", "chunk": "done", "embed": "done"})
    stranger = await client.post(
        f"/jobs/{job_id}/reprocess", headers=token("mallory"), json={"from": "chunk"}
    )
    assert stranger.status_code == 404
    for body in (
        {"from": "everything"},
        {"from": "chunk", "options": {"chunking": "magic"}},
        {"from": "chunk", "options": {"modle": "base"}},
        {"from": "chunk", "extra": 1},
    ):
        response = await client.post(f"/jobs/{job_id}/reprocess", headers=headers, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    anonymous = await client.post(f"/jobs/{job_id}/reprocess", json={"from": "chunk"})
    assert anonymous.status_code == 401
    # Nothing above started a new run.
    assert await db.fetchval("SELECT generation FROM jobs WHERE id = $1", job_id) == 0


async def test_transcript_formats_words_and_chunks(client, token, db, uploaded_job):
    headers = token("rita")
    job_id = await uploaded_job(client, headers)
    await finish_stages(db, job_id, states={"transcribe": "done", "chunk": "done"})
    # Words are shown only to a job that asked for them (a job with speakers stores them
    # for the speaker join either way).
    await db.execute(
        """UPDATE jobs SET options = options || '{"word_timestamps": true}' WHERE id = $1""",
        job_id,
    )
    await db.execute(
        "UPDATE segments SET words = $2::jsonb WHERE job_id = $1 AND idx = 0",
        job_id,
        [
            {"start": 0.0, "end": 0.6, "word": " The", "probability": 0.9},
            {"start": 0.6, "end": 1.5, "word": " quick", "probability": 0.8},
        ],
    )
    as_json = (await client.get(f"/jobs/{job_id}/transcript", headers=headers)).json()
    assert as_json["complete"] is True
    assert [w["word"] for w in as_json["segments"][0]["words"]] == [" The", " quick"]
    assert as_json["segments"][1]["words"] is None

    srt = await client.get(f"/jobs/{job_id}/transcript", params={"format": "srt"}, headers=headers)
    assert srt.status_code == 200
    assert srt.headers["content-type"].startswith("application/x-subrip")
    assert srt.text.startswith("1\n00:00:00,000 --> 00:00:01,500\nThe quick\n\n2\n")
    vtt = await client.get(f"/jobs/{job_id}/transcript", params={"format": "vtt"}, headers=headers)
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n")
    download = await client.get(
        f"/jobs/{job_id}/download", params={"format": "vtt"}, headers=headers
    )
    assert download.headers["content-disposition"] == f'attachment; filename="{job_id}.vtt"'
    bad = await client.get(f"/jobs/{job_id}/transcript", params={"format": "doc"}, headers=headers)
    assert bad.status_code == 422

    chunks = (await client.get(f"/jobs/{job_id}/chunks", headers=headers)).json()
    assert [(c["index"], c["start"], c["end"], c["method"]) for c in chunks["chunks"]] == [
        (0, 0.0, 3.4, "local")
    ]
    assert (await client.get(f"/jobs/{job_id}/chunks", headers=token("mallory"))).status_code == 404


async def test_rediarize_with_the_number_of_speakers_keeps_the_transcript(
    client, token, db, read_topic, uploaded_job
):
    headers = token("rita")
    job_id = await uploaded_job(client, headers)
    stages = {"transcribe": "done", "diarize": "done", "chunk": "done", "embed": "done"}
    await finish_stages(db, job_id, states=stages)
    url = f"/jobs/{job_id}/reprocess"

    for changes in ({"num_speakers": 2}, {"speakers": True, "min_speakers": 3, "max_speakers": 2}):
        refused = await client.post(
            url, headers=headers, json={"from": "diarize", "options": changes}
        )
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")

    response = await client.post(
        url,
        headers=headers,
        json={"from": "diarize", "options": {"speakers": True, "num_speakers": 2}},
    )

    assert response.status_code == 202, response.text
    view = response.json()
    assert (view["options"]["speakers"], view["options"]["num_speakers"]) == (True, 2)
    assert {s["stage"]: s["state"] for s in view["stages"]} == {
        "transcribe": "done",  # kept: not transcribed again
        "diarize": "pending",
        "chunk": "pending",
        "embed": "pending",
    }
    # The diarizer's input is announced again, for the new run and its options.
    _, (_, event) = await read_topic(topics.AUDIO_UPLOADED, job_id, count=2)
    assert event["generation"] == 1
    assert event["options"]["num_speakers"] == 2
    # The transcript rows are kept as they were.
    assert await db.fetchval("SELECT text FROM transcripts WHERE job_id = $1", job_id) == (
        "The quick brown fox."
    )
    segments = await db.fetch("SELECT idx, text FROM segments WHERE job_id = $1", job_id)
    assert [(r["idx"], r["text"]) for r in segments] == [(0, "The quick"), (1, "brown fox.")]
    rows = await db.fetch(
        "SELECT stage, state, generation FROM job_stages WHERE job_id = $1", job_id
    )
    assert {r["stage"]: (r["state"], r["generation"]) for r in rows} == {"transcribe": ("done", 1)}
