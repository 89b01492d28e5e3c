"""Custom vocabulary (issue 21): a user's list of names and terms, stored, replaced, added to
and removed from, normalised and bounded by the one rule (normalize_hotwords); merged after
a job's own hotwords when the job is created or transcribed again, so that audio.uploaded
and the job's view hold the effective list; a merge beyond the limits is a 422 naming the
limit and creates nothing; a job may leave the user's list out (use_vocabulary=false).
Against the real Postgres and broker."""

from __future__ import annotations

import uuid

from mxw_shared import topics
from mxw_shared.contracts import MAX_HOTWORD_CHARS, MAX_HOTWORDS

PROBLEM = "application/problem+json"


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    return response.json()


async def upload(client, headers, short_ogg, **fields: str):
    return await client.post(
        "/jobs",
        headers=headers,
        params={"force": "true"},
        data=fields,
        files={"file": ("a.ogg", short_ogg, "application/octet-stream")},
    )


async def test_a_vocabulary_is_stored_normalised_and_edited(client, token):
    me = token("vera-vocab")
    empty = await client.get("/vocabulary", headers=me)
    assert empty.status_code == 200, empty.text
    assert empty.json()["terms"] == []
    assert empty.json()["updated_at"] is None
    assert empty.json()["limits"]["max_terms"] == MAX_HOTWORDS

    put = await client.put(
        "/vocabulary",
        headers=me,
        json={"terms": ["  Siobhan ", "Kubernetes", "siobhan", "pg   vector"]},
    )
    assert put.status_code == 200, put.text
    assert put.json()["terms"] == ["Siobhan", "Kubernetes", "pg vector"]
    assert (await client.get("/vocabulary", headers=me)).json()["terms"] == put.json()["terms"]

    added = await client.post("/vocabulary/terms", headers=me, json={"term": "Xochitl"})
    assert added.status_code == 200, added.text
    assert added.json()["terms"][-1] == "Xochitl"
    again = await client.post("/vocabulary/terms", headers=me, json={"term": "XOCHITL"})
    assert again.json()["terms"].count("Xochitl") == 1  # already there: stays where it is

    removed = await client.delete("/vocabulary/terms/pg%20vector", headers=me)
    assert removed.status_code == 200, removed.text
    assert removed.json()["terms"] == ["Siobhan", "Kubernetes", "Xochitl"]
    await client.post("/vocabulary/terms", headers=me, json={"term": "TCP/IP"})
    slashed = await client.delete("/vocabulary/terms/tcp%2Fip", headers=me)
    assert slashed.status_code == 200, slashed.text
    assert slashed.json()["terms"] == ["Siobhan", "Kubernetes", "Xochitl"]
    assert_problem(await client.delete("/vocabulary/terms/Nobody", headers=me), 404)

    # Another user's list is their own.
    other = await client.get("/vocabulary", headers=token("otto-vocab"))
    assert other.json()["terms"] == []

    cleared = await client.put("/vocabulary", headers=me, json={"terms": []})
    assert cleared.json()["terms"] == []


async def test_a_vocabulary_beyond_the_rule_is_refused_with_the_reason(client, token):
    me = token("rex-vocab")
    await client.put("/vocabulary", headers=me, json={"terms": ["Aoife"]})
    cases = {
        "a comma": (["Smith, John"], "comma"),
        "empty": (["  "], "empty"),
        "too long": (["x" * (MAX_HOTWORD_CHARS + 1)], str(MAX_HOTWORD_CHARS)),
        "too many": ([f"term{i}" for i in range(MAX_HOTWORDS + 1)], f"at most {MAX_HOTWORDS}"),
        "too long together": ([f"{i:02d}" + "y" * 50 for i in range(12)], "together"),
        "a control character": (["a\x07b"], "control"),
    }
    for case, (terms, reason) in cases.items():
        body = assert_problem(
            await client.put("/vocabulary", headers=me, json={"terms": terms}), 422
        )
        assert reason in body["detail"], (case, body)
        assert body["limits"]["max_terms"] == MAX_HOTWORDS
    full = [f"term{i}" for i in range(MAX_HOTWORDS)]
    assert (await client.put("/vocabulary", headers=me, json={"terms": full})).status_code == 200
    body = assert_problem(
        await client.post("/vocabulary/terms", headers=me, json={"term": "one more"}), 422
    )
    assert f"at most {MAX_HOTWORDS}" in body["detail"]
    # Nothing refused was stored.
    assert (await client.get("/vocabulary", headers=me)).json()["terms"] == full
    assert (await client.get("/vocabulary")).status_code == 401


async def test_a_job_gets_its_hotwords_then_the_users_vocabulary(
    client, token, short_ogg, read_topic
):
    me = token("hana-hotwords")
    await client.put("/vocabulary", headers=me, json={"terms": ["Siobhan", "Kubernetes"]})

    response = await upload(client, me, short_ogg, hotwords="pgvector, kubernetes\nZyntrix")
    assert response.status_code == 202, response.text
    job = response.json()
    # The job's first, then the user's; a term in both (any case) once, in the job's spelling.
    effective = ["pgvector", "kubernetes", "Zyntrix", "Siobhan"]
    assert job["options"]["hotwords"] == effective
    (_, event), *_ = await read_topic(topics.AUDIO_UPLOADED, uuid.UUID(job["id"]))
    assert event["options"]["hotwords"] == effective

    alone = await upload(client, me, short_ogg, hotwords="Zyntrix", use_vocabulary="false")
    assert alone.status_code == 202, alone.text
    assert alone.json()["options"]["hotwords"] == ["Zyntrix"]

    plain = await upload(client, me, short_ogg)
    assert plain.json()["options"]["hotwords"] == ["Siobhan", "Kubernetes"]

    nobody = await upload(client, token("nico-novocab"), short_ogg)
    assert nobody.json()["options"]["hotwords"] == []

    bad = assert_problem(await upload(client, me, short_ogg, hotwords="a\x07b"), 422)
    assert "hotwords" in bad["detail"]
    assert_problem(await upload(client, me, short_ogg, use_vocabulary="perhaps"), 422)


async def test_a_merge_beyond_the_limits_creates_nothing(client, token, short_ogg, db):
    owner = "lena-limits"
    me = token(owner)
    await client.put(
        "/vocabulary", headers=me, json={"terms": [f"user{i}" for i in range(MAX_HOTWORDS - 1)]}
    )
    before = await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = $1", owner)

    refused = await upload(client, me, short_ogg, hotwords="job1, job2")
    body = assert_problem(refused, 422)
    assert f"at most {MAX_HOTWORDS} hotwords" in body["detail"]
    assert "use_vocabulary" in body["detail"]
    assert (body["job_hotwords"], body["vocabulary_terms"]) == (2, MAX_HOTWORDS - 1)
    assert body["limits"]["max_terms"] == MAX_HOTWORDS
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = $1", owner) == before

    # The same through from-url: refused before anything is fetched (the URL leads nowhere).
    from_url = await client.post(
        "/jobs/from-url",
        headers=me,
        json={"url": "http://127.0.0.1:9/a.ogg", "options": {"hotwords": ["job1", "job2"]}},
    )
    assert "at most" in assert_problem(from_url, 422)["detail"]

    # Without the user's list it fits; a term the job shares with it does not count twice.
    alone = await upload(client, me, short_ogg, hotwords="job1, job2", use_vocabulary="0")
    assert alone.status_code == 202, alone.text
    shared = await upload(client, me, short_ogg, hotwords="user0, job1")
    assert shared.status_code == 202, shared.text
    assert len(shared.json()["options"]["hotwords"]) == MAX_HOTWORDS


async def fail_transcription(db, job_id: uuid.UUID) -> None:
    """The job's run ended with its transcription failed (as test_reprocess writes it)."""
    for stage, state, metrics in (
        ("diarize", "done", {"requested": False}),
        ("transcribe", "failed", {}),
    ):
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state, progress, started_at, finished_at,"
            " error, metrics) VALUES ($1, $2, $3, 1, now(), now(), 'boom', $4)",
            job_id,
            stage,
            state,
            metrics,
        )


async def test_transcribing_again_takes_the_vocabulary_as_it_is_now(
    client, token, short_ogg, db, read_topic
):
    me = token("rosa-rerun")
    response = await upload(client, me, short_ogg, hotwords="Niamh")
    job_id = uuid.UUID(response.json()["id"])
    await fail_transcription(db, job_id)
    await client.put("/vocabulary", headers=me, json={"terms": ["Saoirse"]})

    rerun = await client.post(f"/jobs/{job_id}/reprocess", headers=me, json={"from": "transcribe"})
    assert rerun.status_code == 202, rerun.text
    assert rerun.json()["options"]["hotwords"] == ["Niamh", "Saoirse"]
    events = await read_topic(topics.AUDIO_UPLOADED, job_id, count=2)
    assert events[-1][1]["options"]["hotwords"] == ["Niamh", "Saoirse"]

    # With use_vocabulary false: the hotwords exactly as given.
    other = uuid.UUID((await upload(client, me, short_ogg, hotwords="Niamh")).json()["id"])
    await fail_transcription(db, other)
    exact = await client.post(
        f"/jobs/{other}/reprocess",
        headers=me,
        json={"from": "transcribe", "options": {"hotwords": ["Aoife"]}, "use_vocabulary": False},
    )
    assert exact.status_code == 202, exact.text
    assert exact.json()["options"]["hotwords"] == ["Aoife"]
