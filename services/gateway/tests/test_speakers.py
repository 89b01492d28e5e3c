"""Speakers in the gateway: the job options that ask for them, every transcript output
attributed at read time (JSON, txt, srt, vtt), and the corrections (rename, merge, move a
segment) shown at once in the downloads and the chunks. The diarizer's and chunker's rows
are written here as those services write them; the app runs against the real Postgres."""

from __future__ import annotations

import uuid

import pytest

# Segment 1 is shared: "Hi Bob." is SPEAKER_02's, "How are you?" SPEAKER_01's.
SEGMENTS = [
    (0, 0.0, 2.0, "Hello there.", [(0.0, 0.8, " Hello"), (0.9, 1.8, " there.")]),
    (
        1,
        2.0,
        5.0,
        "Hi Bob. How are you?",
        [
            (2.0, 2.4, " Hi"),
            (2.5, 2.9, " Bob."),
            (3.2, 3.6, " How"),
            (3.7, 4.0, " are"),
            (4.1, 4.8, " you?"),
        ],
    ),
]
TURNS = [(0.0, 1.9, "SPEAKER_01"), (2.0, 3.0, "SPEAKER_02"), (3.1, 5.0, "SPEAKER_01")]


@pytest.fixture
def diarized_job(client, token, db, short_ogg):
    """A finished job of `owner`'s that asked for speakers, with the stored rows of every
    stage; returns its id."""

    async def make(owner: str, **options: str) -> uuid.UUID:
        response = await client.post(
            "/jobs",
            headers=token(owner),
            params={"force": "true"},
            files={"file": ("talk.ogg", short_ogg, "application/ogg")},
            data={"speakers": "true", **options},
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
            " ($1, 'en', 5.0, 'tiny.en', 'Hello there. Hi Bob. How are you?')",
            job_id,
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
        for idx, (start, end, speaker) in enumerate(TURNS):
            await db.execute(
                "INSERT INTO speaker_turns (job_id, idx, start_s, end_s, speaker)"
                " VALUES ($1, $2, $3, $4, $5)",
                job_id,
                idx,
                start,
                end,
                speaker,
            )
        await db.execute(
            "INSERT INTO job_speakers (job_id, label, talk_s) VALUES"
            " ($1, 'SPEAKER_01', 3.8), ($1, 'SPEAKER_02', 1.0)",
            job_id,
        )
        await db.execute(
            "INSERT INTO chunks (job_id, owner_id, idx, text, start_s, end_s, method, speakers)"
            " VALUES ($1, $2, 0, 'Hello there.', 0, 2, 'local', '{SPEAKER_01}'),"
            " ($1, $2, 1, 'Hi Bob. How are you?', 2, 5, 'local', '{SPEAKER_01,SPEAKER_02}')",
            job_id,
            owner,
        )
        return job_id

    return make


async def chunk_speakers(db, job_id: uuid.UUID) -> list[list[str]]:
    rows = await db.fetch("SELECT speakers FROM chunks WHERE job_id = $1 ORDER BY idx", job_id)
    return [list(r["speakers"]) for r in rows]


async def text_of(client, headers, job_id: uuid.UUID, fmt: str) -> str:
    response = await client.get(f"/jobs/{job_id}/download", params={"format": fmt}, headers=headers)
    assert response.status_code == 200, response.text
    return response.text


async def test_upload_asks_for_speakers_and_refuses_bad_counts(client, token, short_ogg):
    headers = token("sam")
    for fields in (
        {"num_speakers": "2"},  # counts need speakers=true
        {"speakers": "true", "min_speakers": "3", "max_speakers": "2"},
        {"speakers": "true", "num_speakers": "5", "max_speakers": "4"},
        {"speakers": "true", "num_speakers": "0"},
        {"speakers": "true", "max_speakers": "33"},
    ):
        response = await client.post(
            "/jobs",
            headers=headers,
            params={"force": "true"},
            files={"file": ("a.ogg", short_ogg, "application/ogg")},
            data=fields,
        )
        assert response.status_code == 422, (fields, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")

    response = await client.post(
        "/jobs",
        headers=headers,
        params={"force": "true"},
        files={"file": ("a.ogg", short_ogg, "application/ogg")},
        data={"speakers": "true", "min_speakers": "2", "max_speakers": "3"},
    )
    assert response.status_code == 202, response.text
    options = response.json()["options"]
    assert (options["speakers"], options["min_speakers"], options["max_speakers"]) == (True, 2, 3)
    assert options["num_speakers"] is None


async def test_url_ingest_takes_the_speaker_options(client, token):
    response = await client.post(
        "/jobs/from-url",
        headers=token("sam"),
        json={
            "url": "https://example.invalid/a.ogg",
            "options": {"speakers": False, "num_speakers": 2},
        },
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_transcript_json_has_speakers_split_segments_and_no_unasked_words(
    client, token, diarized_job
):
    headers = token("sam")
    job_id = await diarized_job("sam")

    body = (await client.get(f"/jobs/{job_id}/transcript", headers=headers)).json()

    assert [(s["index"], s["speaker"], s["text"]) for s in body["segments"]] == [
        (0, "SPEAKER_01", "Hello there."),
        (1, "SPEAKER_02", "Hi Bob."),
        (1, "SPEAKER_01", "How are you?"),
    ]
    assert [(s["start"], s["end"]) for s in body["segments"][1:]] == [(2.0, 2.9), (3.2, 5.0)]
    # Stored for the join, not asked for: not shown.
    assert all(s["words"] is None for s in body["segments"])
    assert body["speakers"] == [
        {"label": "SPEAKER_01", "name": "Speaker 1", "talk_s": 3.8},
        {"label": "SPEAKER_02", "name": "Speaker 2", "talk_s": 1.0},
    ]


async def test_words_carry_their_speaker_when_asked_for(client, token, diarized_job):
    headers = token("sam")
    job_id = await diarized_job("sam", word_timestamps="true")

    body = (await client.get(f"/jobs/{job_id}/transcript", headers=headers)).json()

    words = [(w["word"], w["speaker"]) for s in body["segments"] for w in s["words"]]
    assert words == [
        (" Hello", "SPEAKER_01"),
        (" there.", "SPEAKER_01"),
        (" Hi", "SPEAKER_02"),
        (" Bob.", "SPEAKER_02"),
        (" How", "SPEAKER_01"),
        (" are", "SPEAKER_01"),
        (" you?", "SPEAKER_01"),
    ]


async def test_text_subtitles_name_the_speakers(client, token, diarized_job):
    headers = token("sam")
    job_id = await diarized_job("sam")

    assert await text_of(client, headers, job_id, "txt") == (
        "Speaker 1: Hello there.\n\nSpeaker 2: Hi Bob.\n\nSpeaker 1: How are you?\n"
    )
    srt = await text_of(client, headers, job_id, "srt")
    assert srt == (
        "1\n00:00:00,000 --> 00:00:02,000\nSpeaker 1: Hello there.\n\n"
        "2\n00:00:02,000 --> 00:00:02,900\nSpeaker 2: Hi Bob.\n\n"
        "3\n00:00:03,200 --> 00:00:05,000\nSpeaker 1: How are you?\n"
    )
    vtt = await text_of(client, headers, job_id, "vtt")
    assert vtt == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:02.000\n<v Speaker 1>Hello there.\n\n"
        "00:00:02.000 --> 00:00:02.900\n<v Speaker 2>Hi Bob.\n\n"
        "00:00:03.200 --> 00:00:05.000\n<v Speaker 1>How are you?\n"
    )


async def test_a_job_without_speakers_renders_as_before(client, token, db, diarized_job):
    headers = token("sam")
    job_id = await diarized_job("sam")
    # Turns left from a run that asked for speakers are not shown once a run does not.
    await db.execute(
        """UPDATE jobs SET options = options || '{"speakers": false}' WHERE id = $1""", job_id
    )

    body = (await client.get(f"/jobs/{job_id}/transcript", headers=headers)).json()
    assert [(s["index"], s["speaker"]) for s in body["segments"]] == [(0, None), (1, None)]
    assert body["speakers"] is None
    assert await text_of(client, headers, job_id, "txt") == "Hello there.\nHi Bob. How are you?\n"
    assert "Speaker" not in await text_of(client, headers, job_id, "srt")
    assert "<v" not in await text_of(client, headers, job_id, "vtt")


async def test_rename_shows_at_once_in_every_output(client, token, diarized_job):
    headers = token("sam")
    job_id = await diarized_job("sam")

    response = await client.patch(
        f"/jobs/{job_id}/speakers/SPEAKER_02", headers=headers, json={"name": "  Bob & <Co>  "}
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"label": "SPEAKER_02", "name": "Bob & <Co>", "talk_s": 1.0}
    listed = (await client.get(f"/jobs/{job_id}/speakers", headers=headers)).json()
    assert [(s["label"], s["name"]) for s in listed["speakers"]] == [
        ("SPEAKER_01", "Speaker 1"),
        ("SPEAKER_02", "Bob & <Co>"),
    ]
    assert "Bob & <Co>: Hi Bob." in await text_of(client, headers, job_id, "txt")
    assert "\nBob & <Co>: Hi Bob.\n" in await text_of(client, headers, job_id, "srt")
    # WebVTT: the voice annotation escaped as the spec asks.
    assert "\n<v Bob &amp; &lt;Co&gt;>Hi Bob.\n" in await text_of(client, headers, job_id, "vtt")
    body = (await client.get(f"/jobs/{job_id}/transcript", headers=headers)).json()
    assert body["speakers"][1]["name"] == "Bob & <Co>"


async def test_rename_refusals(client, token, diarized_job):
    headers = token("sam")
    job_id = await diarized_job("sam")
    url = f"/jobs/{job_id}/speakers/SPEAKER_01"
    for name in ("", "   ", "x" * 256, "Al\nice", "Al\x00ice", None):
        response = await client.patch(url, headers=headers, json={"name": name})
        assert response.status_code == 422, (name, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    longest = await client.patch(url, headers=headers, json={"name": "x" * 255})
    assert longest.status_code == 200

    unknown = await client.patch(
        f"/jobs/{job_id}/speakers/SPEAKER_09", headers=headers, json={"name": "Zed"}
    )
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    # Another user's job does not exist for them, and nothing changed.
    other = await client.patch(url, headers=token("mallory"), json={"name": "Mallory"})
    assert other.status_code == 404
    assert "no job" in other.json()["detail"]
    listed = (await client.get(f"/jobs/{job_id}/speakers", headers=headers)).json()
    assert listed["speakers"][0]["name"] == "x" * 255
    assert (await client.get(f"/jobs/{job_id}/speakers", headers=token("mallory"))).status_code == (
        404
    )


async def test_speakers_of_a_job_that_did_not_ask_for_them(client, token, upload_short):
    headers = token("sam")
    response = await upload_short(client, headers)
    job_id = response.json()["id"]
    listed = await client.get(f"/jobs/{job_id}/speakers", headers=headers)
    assert listed.json() == {"job_id": job_id, "speakers": []}
    rename = await client.patch(
        f"/jobs/{job_id}/speakers/SPEAKER_01", headers=headers, json={"name": "Alice"}
    )
    assert rename.status_code == 409
    assert rename.headers["content-type"].startswith("application/problem+json")


async def test_merge_relabels_turns_sums_talk_time_and_updates_chunks(
    client, token, db, diarized_job
):
    headers = token("sam")
    job_id = await diarized_job("sam")
    await client.patch(f"/jobs/{job_id}/speakers/SPEAKER_02", headers=headers, json={"name": "Bo"})
    url = f"/jobs/{job_id}/speakers/merge"

    itself = await client.post(
        url, headers=headers, json={"from": "SPEAKER_01", "into": "SPEAKER_01"}
    )
    assert itself.status_code == 422
    assert itself.headers["content-type"].startswith("application/problem+json")
    unknown = await client.post(
        url, headers=headers, json={"from": "SPEAKER_07", "into": "SPEAKER_01"}
    )
    assert unknown.status_code == 404
    other = await client.post(
        url, headers=token("mallory"), json={"from": "SPEAKER_02", "into": "SPEAKER_01"}
    )
    assert other.status_code == 404

    response = await client.post(
        url, headers=headers, json={"from": "SPEAKER_02", "into": "SPEAKER_01"}
    )

    assert response.status_code == 200, response.text
    # One speaker left, with both talk times and the name the merged one had.
    assert response.json()["speakers"] == [
        {"label": "SPEAKER_01", "name": "Bo", "talk_s": 4.8, "profile_id": None, "suggestion": None}
    ]
    turns = await db.fetch("SELECT speaker FROM speaker_turns WHERE job_id = $1", job_id)
    assert {r["speaker"] for r in turns} == {"SPEAKER_01"}
    assert await chunk_speakers(db, job_id) == [["SPEAKER_01"], ["SPEAKER_01"]]
    assert await text_of(client, headers, job_id, "txt") == (
        "Bo: Hello there. Hi Bob. How are you?\n"
    )


async def test_moving_part_of_a_segment_rewrites_the_turns_and_the_chunks(
    client, token, db, diarized_job
):
    headers = token("sam")
    job_id = await diarized_job("sam")
    url = f"/jobs/{job_id}/segments/0/speaker"

    for body in (
        {"speaker": "SPEAKER_02", "start_s": 1.5, "end_s": 2.5},  # past the segment's end
        {"speaker": "SPEAKER_02", "start_s": 1.0, "end_s": 1.0},
        {"speaker": "bad label!"},
    ):
        refused = await client.put(url, headers=headers, json=body)
        assert refused.status_code == 422, (body, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
    missing = await client.put(
        f"/jobs/{job_id}/segments/9/speaker", headers=headers, json={"speaker": "SPEAKER_02"}
    )
    assert missing.status_code == 404
    other = await client.put(url, headers=token("mallory"), json={"speaker": "SPEAKER_02"})
    assert other.status_code == 404

    # " there." (0.9-1.8) to a new speaker: the segment splits, chunk 0 has two speakers.
    response = await client.put(
        url, headers=headers, json={"speaker": "SPEAKER_03", "start_s": 0.85, "end_s": 2.0}
    )

    assert response.status_code == 200, response.text
    assert [(s["label"], s["name"]) for s in response.json()["speakers"]] == [
        ("SPEAKER_01", "Speaker 1"),
        ("SPEAKER_02", "Speaker 2"),
        ("SPEAKER_03", "Speaker 3"),
    ]
    turns = await db.fetch(
        "SELECT idx, start_s, end_s, speaker FROM speaker_turns WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    assert [(r["idx"], r["start_s"], r["end_s"], r["speaker"]) for r in turns] == [
        (0, 0.0, 0.85, "SPEAKER_01"),
        (1, 0.85, 2.0, "SPEAKER_03"),
        (2, 2.0, 3.0, "SPEAKER_02"),
        (3, 3.1, 5.0, "SPEAKER_01"),
    ]
    assert await chunk_speakers(db, job_id) == [
        ["SPEAKER_01", "SPEAKER_03"],
        ["SPEAKER_02", "SPEAKER_01"],
    ]
    assert await text_of(client, headers, job_id, "txt") == (
        "Speaker 1: Hello\n\nSpeaker 3: there.\n\nSpeaker 2: Hi Bob.\n\nSpeaker 1: How are you?\n"
    )
    chunks = (await client.get(f"/jobs/{job_id}/chunks", headers=headers)).json()["chunks"]
    assert [c["speakers"] for c in chunks] == [
        ["SPEAKER_01", "SPEAKER_03"],
        ["SPEAKER_02", "SPEAKER_01"],
    ]

    # The whole of segment 1 to SPEAKER_02, then merged away: the chunks follow each time.
    whole = await client.put(
        f"/jobs/{job_id}/segments/1/speaker", headers=headers, json={"speaker": "SPEAKER_02"}
    )
    assert whole.status_code == 200, whole.text
    assert await chunk_speakers(db, job_id) == [["SPEAKER_01", "SPEAKER_03"], ["SPEAKER_02"]]
    talk = {s["label"]: s["talk_s"] for s in whole.json()["speakers"]}
    assert talk == pytest.approx({"SPEAKER_01": 0.85, "SPEAKER_02": 3.0, "SPEAKER_03": 1.15})


async def test_a_moved_segment_is_a_revision_the_history_shows_and_a_revert_undoes(
    client, token, db, diarized_job
):
    headers = token("rhea")
    job_id = await diarized_job("rhea")
    read = await client.get(f"/jobs/{job_id}/transcript", headers=headers)
    etag = read.headers["etag"]
    before = await text_of(client, headers, job_id, "txt")
    stale = await client.put(
        f"/jobs/{job_id}/segments/0/speaker",
        headers={**headers, "If-Match": '"0-0"'},
        json={"speaker": "SPEAKER_02"},
    )
    assert stale.status_code == 412
    moved = await client.put(
        f"/jobs/{job_id}/segments/0/speaker",
        headers={**headers, "If-Match": etag},
        json={"speaker": "SPEAKER_02"},
    )
    assert moved.status_code == 200, moved.text
    assert (await text_of(client, headers, job_id, "txt")).startswith("Speaker 2: Hello there.")
    history = (await client.get(f"/jobs/{job_id}/transcript/revisions", headers=headers)).json()
    assert [(r["revision"], r["operation"]) for r in history["revisions"]] == [(1, "speaker")]
    assert (history["revisions"][0]["start"], history["revisions"][0]["end"]) == (0.0, 2.0)
    # A speaker move re-cuts nothing: the chunks' speakers follow in place.
    assert not await db.fetchval(
        "SELECT count(*) FROM outbox WHERE key = $1 AND topic = 'transcript.edited'", str(job_id)
    )
    assert await chunk_speakers(db, job_id) == [["SPEAKER_02"], ["SPEAKER_02", "SPEAKER_01"]]
    current = (await client.get(f"/jobs/{job_id}/transcript", headers=headers)).headers["etag"]
    reverted = await client.post(
        f"/jobs/{job_id}/transcript/revert",
        headers={**headers, "If-Match": current},
        json={"revision": 0},
    )
    assert reverted.status_code == 200, reverted.text
    assert await text_of(client, headers, job_id, "txt") == before
    assert await chunk_speakers(db, job_id) == [["SPEAKER_01"], ["SPEAKER_02", "SPEAKER_01"]]
