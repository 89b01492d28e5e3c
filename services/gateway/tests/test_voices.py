"""Voice profiles: a voice named once, suggested in later recordings above
VOICE_MATCH_THRESHOLD, confirmed (a new sample) or rejected (never again for that speaker),
renamed, deleted with its samples, searched by; and never another user's. The diarizer's
rows are written here as it writes them (unit vectors built for the test: one voice is a
base vector plus a little noise, another voice is orthogonal to it); the app runs against
the real Postgres."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from mxw_shared.speakers import VOICE_MATCH_THRESHOLD

DIM = 192
RNG = np.random.default_rng(20)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def axis(i: int) -> np.ndarray:
    v = np.zeros(DIM)
    v[i] = 1.0
    return v


ALICE = axis(0)
BOB = axis(1)


def like(base: np.ndarray, noise: float = 0.01) -> np.ndarray:
    """Another recording of the same voice: the base plus a little noise."""
    return unit(base + RNG.normal(0, noise, DIM))


def at_similarity(base: np.ndarray, similarity: float) -> np.ndarray:
    """A unit vector whose cosine similarity to `base` (an axis, not 5) is `similarity`."""
    return similarity * base + np.sqrt(1 - similarity**2) * axis(5)


# Chunk 0: both speak ("garden" is said by SPEAKER_01 only, "tomatoes" by SPEAKER_02).
SEGMENTS = [
    (0, 0.0, 4.0, "Welcome to the garden hour."),
    (1, 4.0, 8.0, "Tomatoes need full sun."),
    (2, 30.0, 34.0, "Garden soil should drain well."),
]
TURNS = [(0.0, 4.0, "SPEAKER_01"), (4.0, 8.0, "SPEAKER_02"), (30.0, 34.0, "SPEAKER_01")]


@pytest.fixture
def voice_job(client, token, db, short_ogg):
    """A finished job of `owner`'s with two speakers whose voices are `first`, `second`."""

    async def make(owner: str, first: np.ndarray | None, second: np.ndarray | None) -> uuid.UUID:
        response = await client.post(
            "/jobs",
            headers=token(owner),
            params={"force": "true"},
            files={"file": ("talk.ogg", short_ogg, "application/ogg")},
            data={"speakers": "true"},
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
            " ($1, 'en', 34.0, 'tiny.en', 'garden')",
            job_id,
        )
        await db.executemany(
            "INSERT INTO segments (job_id, idx, start_s, end_s, text) VALUES ($1, $2, $3, $4, $5)",
            [(job_id, *s) for s in SEGMENTS],
        )
        await db.executemany(
            "INSERT INTO speaker_turns (job_id, idx, start_s, end_s, speaker)"
            " VALUES ($1, $2, $3, $4, $5)",
            [(job_id, i, *t) for i, t in enumerate(TURNS)],
        )
        await db.executemany(
            "INSERT INTO job_speakers (job_id, label, talk_s, embedding) VALUES ($1, $2, $3, $4)",
            [(job_id, "SPEAKER_01", 8.0, first), (job_id, "SPEAKER_02", 4.0, second)],
        )
        await db.execute(
            "INSERT INTO chunks (job_id, owner_id, idx, text, start_s, end_s, method, speakers)"
            " VALUES ($1, $2, 0, 'Welcome to the garden hour. Tomatoes need full sun.', 0, 8,"
            " 'local', '{SPEAKER_01,SPEAKER_02}'),"
            " ($1, $2, 1, 'Garden soil should drain well.', 30, 34, 'local', '{SPEAKER_01}')",
            job_id,
            owner,
        )
        return job_id

    return make


async def speakers_of(client, headers, job_id) -> dict[str, dict]:
    response = await client.get(f"/jobs/{job_id}/speakers", headers=headers)
    assert response.status_code == 200, response.text
    return {s["label"]: s for s in response.json()["speakers"]}


async def name_voice(client, headers, job_id, label: str, name: str) -> dict:
    response = await client.post(
        "/voices", headers=headers, json={"name": name, "job_id": str(job_id), "label": label}
    )
    assert response.status_code == 201, response.text
    return response.json()


def problem(response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def samples(db, profile_id) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM voice_samples WHERE profile_id = $1", uuid.UUID(profile_id)
    )


async def test_name_a_voice_list_get_rename_and_delete_with_its_samples(
    client, token, db, voice_job
):
    headers = token("vp-ann")
    job_id = await voice_job("vp-ann", like(ALICE), like(BOB))

    created = await client.post(
        "/voices",
        headers=headers,
        json={"name": "  Alice  ", "job_id": str(job_id), "label": "SPEAKER_01"},
    )
    assert created.status_code == 201, created.text
    alice = created.json()
    assert created.headers["location"] == f"/voices/{alice['id']}"
    assert (alice["name"], alice["samples"]) == ("Alice", 1)
    # The speaker has the name and the profile; the other speaker is as it was.
    listed = await speakers_of(client, headers, job_id)
    assert (listed["SPEAKER_01"]["name"], listed["SPEAKER_01"]["profile_id"]) == (
        "Alice",
        alice["id"],
    )
    assert listed["SPEAKER_01"]["suggestion"] is None
    assert (listed["SPEAKER_02"]["name"], listed["SPEAKER_02"]["profile_id"]) == (
        "Speaker 2",
        None,
    )
    transcript = (await client.get(f"/jobs/{job_id}/transcript", headers=headers)).json()
    assert transcript["segments"][0]["speaker"] == "SPEAKER_01"
    assert transcript["speakers"][0]["name"] == "Alice"

    # A second profile; the list is newest first and pages with a cursor.
    bob = await name_voice(client, headers, job_id, "SPEAKER_02", "Bob")
    page = (await client.get("/voices", headers=headers, params={"limit": 1})).json()
    assert [v["name"] for v in page["items"]] == ["Bob"]
    rest = await client.get("/voices", headers=headers, params={"cursor": page["next_cursor"]})
    assert [v["name"] for v in rest.json()["items"]] == ["Alice"]
    assert rest.json()["next_cursor"] is None
    problem(await client.get("/voices", headers=headers, params={"cursor": "nope"}), 422)
    got = await client.get(f"/voices/{alice['id']}", headers=headers)
    assert got.json() == alice

    # The same name (whatever its case) is taken; renaming renames the linked speakers.
    problem(
        await client.post(
            "/voices",
            headers=headers,
            json={"name": "alice", "job_id": str(job_id), "label": "SPEAKER_02"},
        ),
        409,
    )
    problem(
        await client.patch(f"/voices/{bob['id']}", headers=headers, json={"name": "ALICE"}), 409
    )
    renamed = await client.patch(
        f"/voices/{alice['id']}", headers=headers, json={"name": "Alice B."}
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Alice B."
    assert renamed.json()["updated_at"] > alice["updated_at"]
    assert (await speakers_of(client, headers, job_id))["SPEAKER_01"]["name"] == "Alice B."

    # Delete: the profile and all its samples go; the speaker keeps its name, unlinked.
    assert await samples(db, alice["id"]) == 1
    deleted = await client.delete(f"/voices/{alice['id']}", headers=headers)
    assert deleted.status_code == 204
    assert await samples(db, alice["id"]) == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM voice_profiles WHERE id = $1", uuid.UUID(alice["id"])
        )
        == 0
    )
    after = await speakers_of(client, headers, job_id)
    assert (after["SPEAKER_01"]["name"], after["SPEAKER_01"]["profile_id"]) == ("Alice B.", None)
    problem(await client.get(f"/voices/{alice['id']}", headers=headers), 404)
    problem(await client.delete(f"/voices/{alice['id']}", headers=headers), 404)
    assert [v["name"] for v in (await client.get("/voices", headers=headers)).json()["items"]] == [
        "Bob"
    ]

    # A deleted job takes its samples with it.
    assert await samples(db, bob["id"]) == 1
    assert (await client.delete(f"/jobs/{job_id}", headers=headers)).status_code == 204
    assert await samples(db, bob["id"]) == 0


async def test_a_close_voice_is_suggested_and_a_far_one_is_not(client, token, db, voice_job):
    headers = token("vp-ben")
    first = await voice_job("vp-ben", ALICE, like(BOB))  # the profile's centroid: ALICE
    alice = await name_voice(client, headers, first, "SPEAKER_01", "Alice")

    # Later recordings: one just above the threshold, one just below it.
    above = min(1.0, VOICE_MATCH_THRESHOLD + 0.03)
    below = VOICE_MATCH_THRESHOLD - 0.03
    later = await voice_job("vp-ben", at_similarity(ALICE, below), at_similarity(ALICE, above))
    listed = await speakers_of(client, headers, later)
    assert listed["SPEAKER_01"]["suggestion"] is None
    hint = listed["SPEAKER_02"]["suggestion"]
    assert (hint["profile_id"], hint["name"]) == (alice["id"], "Alice")
    assert hint["similarity"] == pytest.approx(above, abs=1e-3)
    assert hint["similarity"] >= VOICE_MATCH_THRESHOLD
    # A suggestion is not a confirmation: the speaker is not named yet.
    assert (listed["SPEAKER_02"]["name"], listed["SPEAKER_02"]["profile_id"]) == (
        "Speaker 2",
        None,
    )
    # A speaker without a voice (added by a correction) is never suggested anything.
    await db.execute(
        "UPDATE job_speakers SET embedding = NULL WHERE job_id = $1 AND label = 'SPEAKER_02'",
        later,
    )
    assert (await speakers_of(client, headers, later))["SPEAKER_02"]["suggestion"] is None


async def test_accept_adds_a_sample_and_links_reject_hides_the_suggestion(
    client, token, db, voice_job
):
    headers = token("vp-cat")
    first = await voice_job("vp-cat", like(ALICE), like(BOB))
    alice = await name_voice(client, headers, first, "SPEAKER_01", "Alice")
    bob = await name_voice(client, headers, first, "SPEAKER_02", "Bob")

    later = await voice_job("vp-cat", like(BOB), like(ALICE))  # the order found differs
    listed = await speakers_of(client, headers, later)
    assert listed["SPEAKER_01"]["suggestion"]["name"] == "Bob"
    assert listed["SPEAKER_02"]["suggestion"]["name"] == "Alice"
    assert listed["SPEAKER_02"]["suggestion"]["similarity"] > 0.95

    url = f"/jobs/{later}/speakers/SPEAKER_02/voice"
    accepted = await client.post(
        url, headers=headers, json={"profile_id": alice["id"], "accept": True}
    )
    assert accepted.status_code == 200, accepted.text
    now = {s["label"]: s for s in accepted.json()["speakers"]}
    assert (now["SPEAKER_02"]["name"], now["SPEAKER_02"]["profile_id"]) == ("Alice", alice["id"])
    assert now["SPEAKER_02"]["suggestion"] is None
    assert await samples(db, alice["id"]) == 2  # the profile learnt this recording's voice
    got = (await client.get(f"/voices/{alice['id']}", headers=headers)).json()
    assert got["samples"] == 2
    # Accepting again changes nothing.
    again = await client.post(
        url, headers=headers, json={"profile_id": alice["id"], "accept": True}
    )
    assert again.status_code == 200
    assert await samples(db, alice["id"]) == 2

    # Reject Bob for SPEAKER_01: the suggestion is gone and stays gone; nothing is learnt.
    rejected = await client.post(
        f"/jobs/{later}/speakers/SPEAKER_01/voice",
        headers=headers,
        json={"profile_id": bob["id"], "accept": False},
    )
    assert rejected.status_code == 200, rejected.text
    now = {s["label"]: s for s in rejected.json()["speakers"]}
    assert now["SPEAKER_01"]["suggestion"] is None
    assert (now["SPEAKER_01"]["name"], now["SPEAKER_01"]["profile_id"]) == ("Speaker 1", None)
    assert (await speakers_of(client, headers, later))["SPEAKER_01"]["suggestion"] is None
    assert await samples(db, bob["id"]) == 1

    # Rejecting the confirmed profile unlinks it and withdraws its sample.
    undone = await client.post(
        url, headers=headers, json={"profile_id": alice["id"], "accept": False}
    )
    now = {s["label"]: s for s in undone.json()["speakers"]}
    assert (now["SPEAKER_02"]["name"], now["SPEAKER_02"]["profile_id"]) == ("Speaker 2", None)
    assert now["SPEAKER_02"]["suggestion"] is None
    assert await samples(db, alice["id"]) == 1

    # Unknown speaker or profile: 404; a speaker without a voice: 409.
    problem(
        await client.post(
            f"/jobs/{later}/speakers/SPEAKER_09/voice",
            headers=headers,
            json={"profile_id": alice["id"], "accept": True},
        ),
        404,
    )
    problem(
        await client.post(
            url, headers=headers, json={"profile_id": str(uuid.uuid4()), "accept": True}
        ),
        404,
    )
    await db.execute(
        "UPDATE job_speakers SET embedding = NULL WHERE job_id = $1 AND label = 'SPEAKER_02'",
        later,
    )
    problem(
        await client.post(url, headers=headers, json={"profile_id": alice["id"], "accept": True}),
        409,
    )
    problem(
        await client.post(
            "/voices",
            headers=headers,
            json={"name": "Nobody", "job_id": str(later), "label": "SPEAKER_02"},
        ),
        409,
    )


async def test_a_job_without_speakers_cannot_name_a_voice(client, token, upload_short):
    headers = token("vp-dan")
    job = await upload_short(client, headers)
    assert job.status_code == 202
    problem(
        await client.post(
            "/voices",
            headers=headers,
            json={"name": "Dan", "job_id": job.json()["id"], "label": "SPEAKER_01"},
        ),
        409,
    )


async def test_another_users_profiles_are_never_suggested_seen_or_usable(
    client, token, db, voice_job
):
    eve, mallory = token("vp-eve"), token("vp-mallory")
    evejob = await voice_job("vp-eve", like(ALICE), like(BOB))
    alice = await name_voice(client, eve, evejob, "SPEAKER_01", "Alice")
    voice = alice["id"]

    # Mallory records the very same voice: Eve's profile is not suggested to her.
    theirs = await voice_job("vp-mallory", like(ALICE), like(BOB))
    assert all(
        s["suggestion"] is None for s in (await speakers_of(client, mallory, theirs)).values()
    )
    # Nor listed, shown, renamed, deleted or accepted for her speakers.
    assert (await client.get("/voices", headers=mallory)).json()["items"] == []
    problem(await client.get(f"/voices/{voice}", headers=mallory), 404)
    problem(await client.patch(f"/voices/{voice}", headers=mallory, json={"name": "X"}), 404)
    problem(await client.delete(f"/voices/{voice}", headers=mallory), 404)
    problem(
        await client.post(
            f"/jobs/{theirs}/speakers/SPEAKER_01/voice",
            headers=mallory,
            json={"profile_id": voice, "accept": True},
        ),
        404,
    )
    # Nor can she make a profile from, or decide on, Eve's job; admins neither.
    for headers in (mallory, token("vp-root", admin=True)):
        problem(
            await client.post(
                "/voices",
                headers=headers,
                json={"name": "Eve's", "job_id": str(evejob), "label": "SPEAKER_02"},
            ),
            404,
        )
        problem(
            await client.post(
                f"/jobs/{evejob}/speakers/SPEAKER_02/voice",
                headers=headers,
                json={"profile_id": voice, "accept": False},
            ),
            404,
        )
    # An admin looking at Eve's later job sees no suggestion from anyone's profiles.
    later = await voice_job("vp-eve", like(BOB), like(ALICE))
    as_admin = await speakers_of(client, token("vp-root", admin=True), later)
    assert all(s["suggestion"] is None for s in as_admin.values())
    assert (await speakers_of(client, eve, later))["SPEAKER_02"]["suggestion"]["name"] == "Alice"
    # Searching by Eve's voice: 404 for Mallory, never her chunks.
    problem(
        await client.get(
            "/search", headers=mallory, params={"q": "garden", "mode": "text", "voice": voice}
        ),
        404,
    )
    assert await samples(db, voice) == 1


async def test_search_by_voice_returns_only_that_voices_lines(client, token, voice_job):
    headers = token("vp-fay")
    first = await voice_job("vp-fay", like(ALICE), like(BOB))
    alice = await name_voice(client, headers, first, "SPEAKER_01", "Alice")
    later = await voice_job("vp-fay", like(BOB), like(ALICE))
    accepted = await client.post(
        f"/jobs/{later}/speakers/SPEAKER_02/voice",
        headers=headers,
        json={"profile_id": alice["id"], "accept": True},
    )
    assert accepted.status_code == 200
    await voice_job("vp-fay", like(BOB), like(ALICE))  # her voice, never confirmed

    async def search(**params):
        response = await client.get(
            "/search", params={"mode": "text", "limit": 20, **params}, headers=headers
        )
        assert response.status_code == 200, response.text
        return response.json()["results"]

    # "soil": chunk 1, where only SPEAKER_01 speaks: Alice in the first job only.
    (soil,) = await search(q="soil", voice=alice["id"])
    assert soil["job_id"] == str(first)
    assert [(ln["speaker"], ln["name"], ln["text"]) for ln in soil["lines"]] == [
        ("SPEAKER_01", "Alice", "Garden soil should drain well.")
    ]
    # "garden": every chunk; hers are the first job's two and the later job's first (she
    # speaks in it), each with her lines only; the job she was never confirmed in: none.
    hits = await search(q="garden", voice=alice["id"])
    assert sorted((h["job_id"], h["chunk_index"]) for h in hits) == sorted(
        [(str(first), 0), (str(first), 1), (str(later), 0)]
    )
    said = {(h["job_id"], ln["speaker"], ln["text"]) for h in hits for ln in h["lines"]}
    assert said == {
        (str(first), "SPEAKER_01", "Welcome to the garden hour."),
        (str(first), "SPEAKER_01", "Garden soil should drain well."),
        (str(later), "SPEAKER_02", "Tomatoes need full sun."),
    }
    assert all(ln["name"] == "Alice" for h in hits for ln in h["lines"])
    # In the later job she is SPEAKER_02: the hit's link starts at her line there.
    (hit,) = [h for h in await search(q="tomatoes", voice=alice["id"]) if h["job_id"] == str(later)]
    assert [(ln["speaker"], ln["name"], ln["start_s"]) for ln in hit["lines"]] == [
        ("SPEAKER_02", "Alice", 4.0)
    ]
    assert hit["audio_url"].endswith(f"/jobs/{later}/audio#t=4")
    assert hit["speakers"] == ["Speaker 1", "Alice"]
    # With the POST body too; an unknown profile: 404; a bad id: 422.
    posted = await client.post(
        "/search", headers=headers, json={"q": "tomatoes", "mode": "text", "voice": alice["id"]}
    )
    assert {h["job_id"] for h in posted.json()["results"]} == {str(first), str(later)}
    problem(
        await client.get("/search", headers=headers, params={"q": "x", "voice": str(uuid.uuid4())}),
        404,
    )
    problem(await client.get("/search", headers=headers, params={"q": "x", "voice": "nope"}), 422)


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 256},
        {"name": "Al\x00ice"},
        {"name": "Al\nice"},
        {"name": "Alice", "label": "SPEAKER 01"},
        {"name": "Alice", "job_id": "not-a-uuid"},
        {"name": "Alice", "extra": 1},
    ],
)
async def test_bad_voice_inputs_are_422_problems(client, token, body):
    headers = token("vp-gus")
    full = {"job_id": str(uuid.uuid4()), "label": "SPEAKER_01", **body}
    problem(await client.post("/voices", headers=headers, json=full), 422)
    if set(body) == {"name"}:
        problem(await client.patch(f"/voices/{uuid.uuid4()}", headers=headers, json=body), 422)


async def test_bad_ids_are_422_problems(client, token):
    headers = token("vp-gus")
    problem(await client.get("/voices/not-a-uuid", headers=headers), 422)
    problem(await client.delete("/voices/123", headers=headers), 422)
    problem(
        await client.post(
            f"/jobs/{uuid.uuid4()}/speakers/SPEAKER_01/voice",
            headers=headers,
            json={"profile_id": "nope", "accept": True},
        ),
        422,
    )
    problem(
        await client.post(
            f"/jobs/{uuid.uuid4()}/speakers/SPEAKER_01/voice",
            headers=headers,
            json={"profile_id": str(uuid.uuid4())},
        ),
        422,
    )
    problem(await client.get("/voices", headers=headers, params={"limit": 0}), 422)


@pytest.fixture(scope="module")
def real_voices(speech):
    """The diarizer's voices (its SpeakerModel, as its stage computes them) of two halves
    of one real person's recording each: Allison (en) and June (fr), asterisk's prompts."""
    from mxw_diarizer.domain import diarize
    from mxw_diarizer.models import SpeakerCounts, SpeakerModel
    from mxw_diarizer.settings import DiarizerSettings
    from mxw_shared.audio_decode import decode_audio

    model = SpeakerModel(DiarizerSettings(warmup=False, device="cpu"))
    out = {}
    for who, language in (("allison", "en"), ("june", "fr")):
        samples = decode_audio(speech(language).path, 600)
        half = len(samples) // 2
        for n, part in enumerate((samples[:half], samples[half:]), 1):
            (found,) = diarize(model, part, SpeakerCounts(exactly=1)).voices
            out[f"{who}{n}"] = np.asarray(found.embedding)
    return out


async def test_real_voices_the_same_person_is_suggested_another_is_not(
    client, token, voice_job, real_voices
):
    v = real_voices
    same, other = float(v["allison1"] @ v["allison2"]), float(v["allison1"] @ v["june2"])
    # What the threshold separates: one person's two recordings, two people.
    assert same >= VOICE_MATCH_THRESHOLD > other, (same, other)

    headers = token("vp-real")
    first = await voice_job("vp-real", v["allison1"], v["june1"])
    await name_voice(client, headers, first, "SPEAKER_01", "Allison")
    later = await voice_job("vp-real", v["june2"], v["allison2"])
    listed = await speakers_of(client, headers, later)
    hint = listed["SPEAKER_02"]["suggestion"]
    assert hint["name"] == "Allison"
    assert hint["similarity"] == pytest.approx(same, abs=1e-3)
    assert listed["SPEAKER_01"]["suggestion"] is None  # June does not sound like Allison

    # Once June has a profile too, her later recording is suggested as June.
    await name_voice(client, headers, first, "SPEAKER_02", "June")
    listed = await speakers_of(client, headers, later)
    assert listed["SPEAKER_01"]["suggestion"]["name"] == "June"
    assert listed["SPEAKER_02"]["suggestion"]["name"] == "Allison"


async def test_a_speaker_belongs_to_one_profile_and_a_merge_keeps_it(client, token, db, voice_job):
    headers = token("vp-hal")
    job = await voice_job("vp-hal", like(ALICE), like(BOB))
    alice = await name_voice(client, headers, job, "SPEAKER_01", "Alice")
    bob = await name_voice(client, headers, job, "SPEAKER_02", "Bob")
    # Confirming another profile moves the speaker (and its sample) there.
    moved = await client.post(
        f"/jobs/{job}/speakers/SPEAKER_01/voice",
        headers=headers,
        json={"profile_id": bob["id"], "accept": True},
    )
    assert moved.status_code == 200, moved.text
    now = {s["label"]: s for s in moved.json()["speakers"]}
    assert (now["SPEAKER_01"]["name"], now["SPEAKER_01"]["profile_id"]) == ("Bob", bob["id"])
    assert (await samples(db, alice["id"]), await samples(db, bob["id"])) == (0, 2)
    # A merge: `into` keeps its profile; `from`'s rejections go with it.
    merged = await client.post(
        f"/jobs/{job}/speakers/merge",
        headers=headers,
        json={"from": "SPEAKER_02", "into": "SPEAKER_01"},
    )
    assert merged.status_code == 200, merged.text
    assert [(s["label"], s["profile_id"]) for s in merged.json()["speakers"]] == [
        ("SPEAKER_01", bob["id"])
    ]
