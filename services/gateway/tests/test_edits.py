"""Correcting a transcript through the API: each operation, the ETag/If-Match rules (428,
412), bad edits refused with nothing changed, the history, a revision as it was, revert,
the downloads showing the correction, the event that re-cuts the chunks, and reprocessing
that asks before discarding corrections. The transcriber's rows are written here as it
writes them; the app runs against the real Postgres."""

from __future__ import annotations

import json
import uuid

import pytest

DURATION = 9.0
# (idx, start, end, text, each word's start and end)
TIMED = [
    (0, 0.0, 3.0, "The bred is baked.", [(0.0, 0.5), (0.6, 1.2), (1.3, 1.6), (1.7, 2.8)]),
    (
        1,
        3.0,
        6.0,
        "Salt goes in first. Then water.",
        [(3.0, 3.4), (3.5, 3.9), (4.0, 4.2), (4.3, 4.9), (5.0, 5.4), (5.5, 5.9)],
    ),
    (
        2,
        6.0,
        9.0,
        "Knead it for ten minutes.",
        [(6.0, 6.5), (6.6, 6.8), (6.9, 7.1), (7.2, 7.6), (7.7, 8.6)],
    ),
]
SEGMENTS = [
    (
        idx,
        start,
        end,
        text,
        [(a, b, f" {w}") for (a, b), w in zip(times, text.split(), strict=True)],
    )
    for idx, start, end, text, times in TIMED
]


@pytest.fixture
def transcribed_job(client, token, db, short_ogg):
    """A finished job of `owner`'s with a three-segment transcript (word times) and its
    chunks; returns its id."""

    async def make(owner: str) -> uuid.UUID:
        response = await client.post(
            "/jobs",
            headers=token(owner),
            params={"force": "true"},
            files={"file": ("bread.ogg", short_ogg, "application/ogg")},
            data={"word_timestamps": "true"},
        )
        assert response.status_code == 202, response.text
        job_id = uuid.UUID(response.json()["id"])
        for stage in ("transcribe", "diarize", "chunk", "embed"):
            await db.execute(
                "INSERT INTO job_stages (job_id, stage, state, progress, started_at,"
                " finished_at) VALUES ($1, $2, 'done', 1, now(), now())",
                job_id,
                stage,
            )
        await db.execute(
            "INSERT INTO transcripts (job_id, language, duration_s, model, text) VALUES"
            " ($1, 'en', $2, 'tiny.en', $3)",
            job_id,
            DURATION,
            " ".join(s[3] for s in SEGMENTS),
        )
        for idx, start, end, text, words in SEGMENTS:
            await db.execute(
                "INSERT INTO segments (job_id, idx, start_s, end_s, text, words)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
                job_id,
                idx,
                start,
                end,
                text,
                [{"start": s, "end": e, "word": w, "probability": 0.9} for s, e, w in words],
            )
        await db.execute(
            "INSERT INTO chunks (job_id, owner_id, idx, text, start_s, end_s, method)"
            " VALUES ($1, $2, 0, $3, 0, 9, 'local')",
            job_id,
            owner,
            " ".join(s[3] for s in SEGMENTS),
        )
        return job_id

    return make


async def read(client, headers, job_id: uuid.UUID) -> tuple[dict, str]:
    response = await client.get(f"/jobs/{job_id}/transcript", headers=headers)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["etag"]


def texts(transcript: dict) -> list[str]:
    return [s["text"] for s in transcript["segments"]]


async def test_correcting_a_word_is_a_revision_that_re_cuts_the_chunks(
    client, token, db, transcribed_job
):
    headers = token("edna")
    job_id = await transcribed_job("edna")
    before, etag = await read(client, headers, job_id)
    assert before["revision"] == 0
    generation = await db.fetchval("SELECT generation FROM jobs WHERE id = $1", job_id)

    response = await client.patch(
        f"/jobs/{job_id}/segments/0",
        headers={**headers, "If-Match": etag},
        json={"text": "The bread is baked."},
    )
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["revision"] == 1
    assert response.headers["etag"] != etag
    assert texts(after) == ["The bread is baked.", *texts(before)[1:]]
    # The words kept their times; the corrected one took the old one's place.
    words = after["segments"][0]["words"]
    assert [(w["word"], w["start"], w["end"]) for w in words] == [
        (" The", 0.0, 0.5),
        (" bread", 0.6, 1.2),
        (" is", 1.3, 1.6),
        (" baked.", 1.7, 2.8),
    ]
    assert after["text"].startswith("The bread is baked. Salt goes in first.")
    again, tag = await read(client, headers, job_id)
    assert again == after
    assert tag == response.headers["etag"]

    # One new run of the stages after transcription, announced by transcript.edited.
    assert await db.fetchval("SELECT generation FROM jobs WHERE id = $1", job_id) == generation + 1
    stages = {
        r["stage"]: r["state"]
        for r in await db.fetch("SELECT stage, state FROM job_stages WHERE job_id = $1", job_id)
    }
    assert "chunk" not in stages
    assert "embed" not in stages
    assert stages["transcribe"] == "done"
    row = await db.fetchrow(
        "SELECT payload FROM outbox WHERE key = $1 AND topic = 'transcript.edited'", str(job_id)
    )
    event = json.loads(row["payload"])
    assert event["revision"] == 1
    assert event["operation"] == "text"
    assert (event["start_s"], event["end_s"]) == (0.0, 3.0)
    assert event["generation"] == generation + 1
    assert event["segment_count"] == 3


async def test_every_operation_and_the_history(client, token, transcribed_job):
    headers = token("otto")
    job_id = await transcribed_job("otto")
    original, etag = await read(client, headers, job_id)

    async def do(method: str, path: str, body: dict) -> dict:
        nonlocal etag
        response = await client.request(
            method, f"/jobs/{job_id}{path}", headers={**headers, "If-Match": etag}, json=body
        )
        assert response.status_code == 200, response.text
        etag = response.headers["etag"]
        return response.json()

    # Split "Salt goes in first. Then water." before "Then": between the words' times.
    offset = "Salt goes in first. Then water.".index("Then")
    split = await do("POST", "/segments/1/split", {"offset": offset})
    assert texts(split) == [
        "The bred is baked.",
        "Salt goes in first.",
        "Then water.",
        "Knead it for ten minutes.",
    ]
    first, second = split["segments"][1], split["segments"][2]
    assert first["end"] == second["start"] == pytest.approx(4.95)
    assert (first["start"], second["end"]) == (3.0, 6.0)
    assert [w["word"] for w in second["words"]] == [" Then", " water."]

    # Times: the new last segment starts later.
    timed = await do("PATCH", "/segments/3", {"start": 6.5})
    assert timed["segments"][3]["start"] == 6.5
    # Merge the two halves again.
    merged = await do("POST", "/segments/1/merge", {})
    assert texts(merged) == texts(original)
    assert merged["segments"][1]["start"] == 3.0
    assert merged["segments"][1]["end"] == 6.0

    history = await client.get(f"/jobs/{job_id}/transcript/revisions", headers=headers)
    assert history.status_code == 200
    body = history.json()
    assert body["revision"] == 3
    assert [(r["revision"], r["operation"], r["author"]) for r in body["revisions"]] == [
        (3, "merge", "otto"),
        (2, "times", "otto"),
        (1, "split", "otto"),
    ]
    assert body["revisions"][1]["start"] == 6.0
    assert body["revisions"][1]["end"] == 9.0

    # Any revision as it was; revision 0 is the machine transcript.
    at_one = await client.get(f"/jobs/{job_id}/transcript/revisions/1", headers=headers)
    assert at_one.status_code == 200
    assert texts(at_one.json()) == texts(split)
    at_zero = await client.get(f"/jobs/{job_id}/transcript/revisions/0", headers=headers)
    assert texts(at_zero.json()) == texts(original)
    assert at_zero.json()["segments"][2]["start"] == 6.0
    missing = await client.get(f"/jobs/{job_id}/transcript/revisions/9", headers=headers)
    assert missing.status_code == 404

    # Revert to revision 1 is a new revision equal to it.
    reverted = await do("POST", "/transcript/revert", {"revision": 1})
    assert reverted["revision"] == 4
    assert texts(reverted) == texts(split)
    assert [s["start"] for s in reverted["segments"]] == [s["start"] for s in split["segments"]]
    back = await do("POST", "/transcript/revert", {"revision": 0})
    assert texts(back) == texts(original)
    assert back["segments"][2]["start"] == 6.0
    latest = (await client.get(f"/jobs/{job_id}/transcript/revisions", headers=headers)).json()
    assert [r["operation"] for r in latest["revisions"][:2]] == ["revert", "revert"]


async def test_an_edit_needs_the_current_etag(client, token, db, transcribed_job):
    headers = token("cora")
    job_id = await transcribed_job("cora")
    _, etag = await read(client, headers, job_id)
    path = f"/jobs/{job_id}/segments/2"
    missing = await client.patch(path, headers=headers, json={"text": "Knead it well."})
    assert missing.status_code == 428
    assert missing.headers["content-type"].startswith("application/problem+json")
    first = await client.patch(
        path, headers={**headers, "If-Match": etag}, json={"text": "Knead it well."}
    )
    assert first.status_code == 200
    # A second editor who read the same revision: refused, and nothing changes.
    stale = await client.patch(
        path, headers={**headers, "If-Match": etag}, json={"text": "Knead it badly."}
    )
    assert stale.status_code == 412, stale.text
    problem = stale.json()
    assert problem["etag"] == first.headers["etag"]
    assert problem["revision"] == 1
    now, tag = await read(client, headers, job_id)
    assert texts(now)[2] == "Knead it well."
    assert now["revision"] == 1
    assert tag == first.headers["etag"]
    assert (
        await db.fetchval("SELECT count(*) FROM transcript_revisions WHERE job_id = $1", job_id)
        == 1
    )
    # `*` and a list of tags match as RFC 9110 says.
    star = await client.patch(path, headers={**headers, "If-Match": "*"}, json={"text": "Knead."})
    assert star.status_code == 200
    listed = await client.patch(
        path,
        headers={**headers, "If-Match": f'"nope", W/{star.headers["etag"]}'},
        json={"text": "Knead it."},
    )
    assert listed.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "reason"),
    [
        ("PATCH", "/segments/0", {"text": "   "}, "empty"),
        ("PATCH", "/segments/0", {"text": "bad\u0007bell"}, "control"),
        ("PATCH", "/segments/0", {"end": 99.0}, "the audio"),
        ("PATCH", "/segments/1", {"start": 5.0, "end": 4.0}, "start < end"),
        ("PATCH", "/segments/1", {"end": 9.5}, "audio"),
        ("PATCH", "/segments/2", {"end": 8.0, "start": 2.0}, "previous segment"),
        ("PATCH", "/segments/7", {"text": "x"}, "no segment 7"),
        ("POST", "/segments/0/split", {"offset": 0}, "both sides"),
        ("POST", "/segments/0/split", {"offset": 18}, "both sides"),
        ("POST", "/segments/0/split", {"offset": 4, "at": 3.5}, "outside the segment"),
        ("POST", "/segments/2/merge", {}, "last one"),
        ("POST", "/transcript/revert", {"revision": 5}, "does not exist"),
    ],
)
async def test_bad_edits_are_refused_and_change_nothing(
    client, token, db, transcribed_job, method, path, body, reason
):
    headers = token("bea")
    job_id = await transcribed_job("bea")
    before, etag = await read(client, headers, job_id)
    response = await client.request(
        method, f"/jobs/{job_id}{path}", headers={**headers, "If-Match": etag}, json=body
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert reason in response.json()["detail"]
    after, tag = await read(client, headers, job_id)
    assert (after, tag) == (before, etag)
    assert not await db.fetchval(
        "SELECT count(*) FROM outbox WHERE key = $1 AND topic = 'transcript.edited'", str(job_id)
    )


async def test_subtitles_and_downloads_show_the_correction(client, token, transcribed_job):
    headers = token("sue")
    job_id = await transcribed_job("sue")
    _, etag = await read(client, headers, job_id)
    response = await client.patch(
        f"/jobs/{job_id}/segments/0",
        headers={**headers, "If-Match": etag},
        json={"text": "The bread is baked."},
    )
    assert response.status_code == 200
    for fmt in ("srt", "vtt", "txt", "json"):
        body = (
            await client.get(f"/jobs/{job_id}/download", params={"format": fmt}, headers=headers)
        ).text
        assert "bread" in body, fmt
        assert "bred" not in body, fmt


async def test_edits_wait_for_the_transcript_and_stop_with_a_cancelled_job(
    client, token, db, transcribed_job
):
    headers = token("wes")
    job_id = await transcribed_job("wes")
    _, etag = await read(client, headers, job_id)
    await db.execute(
        "UPDATE job_stages SET state = 'running' WHERE job_id = $1 AND stage = 'transcribe'",
        job_id,
    )
    running = await client.patch(
        f"/jobs/{job_id}/segments/0", headers={**headers, "If-Match": etag}, json={"text": "x y"}
    )
    assert running.status_code == 409, running.text
    await db.execute("UPDATE jobs SET cancelled_at = now() WHERE id = $1", job_id)
    cancelled = await client.patch(
        f"/jobs/{job_id}/segments/0", headers={**headers, "If-Match": etag}, json={"text": "x y"}
    )
    assert cancelled.status_code == 409
    after, _ = await read(client, headers, job_id)
    assert after["revision"] == 0


async def test_only_the_owner_edits_and_sees_the_history(client, token, transcribed_job):
    owner, other, admin = token("olga"), token("mallory"), token("root", admin=True)
    job_id = await transcribed_job("olga")
    _, etag = await read(client, owner, job_id)
    for headers, status in ((other, 404), (admin, 403)):
        response = await client.patch(
            f"/jobs/{job_id}/segments/0",
            headers={**headers, "If-Match": etag},
            json={"text": "Not yours."},
        )
        assert response.status_code == status, response.text
    assert (
        await client.get(f"/jobs/{job_id}/transcript/revisions", headers=other)
    ).status_code == 404
    assert (
        await client.get(f"/jobs/{job_id}/transcript/revisions/0", headers=other)
    ).status_code == 404
    assert (
        await client.get(f"/jobs/{job_id}/transcript/revisions", headers=admin)
    ).status_code == 200
    now, tag = await read(client, owner, job_id)
    assert now["revision"] == 0
    assert tag == etag


async def test_transcribing_again_asks_before_discarding_corrections(
    client, token, db, transcribed_job
):
    headers = token("reva")
    job_id = await transcribed_job("reva")
    _, etag = await read(client, headers, job_id)
    edited = await client.patch(
        f"/jobs/{job_id}/segments/0",
        headers={**headers, "If-Match": etag},
        json={"text": "The bread is baked."},
    )
    assert edited.status_code == 200
    # The edit's run of chunk and embed has finished (no chunker here: marked done).
    for stage in ("chunk", "embed"):
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state, progress, generation, started_at,"
            " finished_at) VALUES ($1, $2, 'done', 1,"
            " (SELECT generation FROM jobs WHERE id = $1), now(), now())",
            job_id,
            stage,
        )
    asked = await client.post(
        f"/jobs/{job_id}/reprocess", headers=headers, json={"from": "transcribe"}
    )
    assert asked.status_code == 409, asked.text
    assert "discard_edits" in asked.json()["detail"]
    kept = await client.post(f"/jobs/{job_id}/reprocess", headers=headers, json={"from": "chunk"})
    assert kept.status_code == 202, kept.text
    assert await db.fetchval("SELECT revision FROM transcripts WHERE job_id = $1", job_id) == 1
    for stage in ("chunk", "embed"):
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state, progress, generation, started_at,"
            " finished_at) VALUES ($1, $2, 'done', 1,"
            " (SELECT generation FROM jobs WHERE id = $1), now(), now())"
            " ON CONFLICT (job_id, stage) DO UPDATE SET state = 'done'",
            job_id,
            stage,
        )
    discarded = await client.post(
        f"/jobs/{job_id}/reprocess",
        headers=headers,
        json={"from": "transcribe", "discard_edits": True},
    )
    assert discarded.status_code == 202, discarded.text
    assert not await db.fetchval(
        "SELECT count(*) FROM transcript_revisions WHERE job_id = $1", job_id
    )
