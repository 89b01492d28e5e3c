"""The gateway's HTTP API in-process against the real Postgres and tansu broker."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import jwt
import pytest
from mxw_shared import topics
from mxw_shared.blobs import local_path
from mxw_shared.devissuer import DevIssuer

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "audio"
SHORT = (FIXTURES / "short_en.ogg").read_bytes()
SOLAR = (FIXTURES / "solar_and_bread.ogg").read_bytes()
UPLOAD_LIMIT = 100_000  # the limit conftest's start_gateway sets


@pytest.fixture(scope="module")
async def client(start_gateway):
    async with start_gateway() as c:
        yield c


@pytest.fixture(scope="module")
def blob_root(infra) -> Path:
    return infra.root / "gateway-blobs"


def stored_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


async def upload(client, headers, data: bytes = SHORT, filename="short_en.ogg", **form):
    return await client.post(
        "/jobs",
        headers=headers,
        files={"file": (filename, data, "application/octet-stream")},
        data={k: str(v) for k, v in form.items()},
    )


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


# ---- uploads ----


async def test_upload_stores_blob_job_event_and_status(client, token, db, read_topic):
    headers = token("uma", name="Uma Upload", email="uma@example.org")
    response = await upload(
        client,
        headers,
        filename="../../secret/dir/Meeting notes.ogg",
        model="tiny.en",
        language="en",
        task="translate",
        word_timestamps="true",
        initial_prompt="Foxes and dogs.",
        chunking="local",
    )

    assert response.status_code == 202, response.text
    job = response.json()
    job_id = uuid.UUID(job["id"])
    assert response.headers["location"] == f"http://gateway.test/jobs/{job_id}"
    assert job["state"] == "queued"
    assert job["progress"] == 0
    assert job["filename"] == "Meeting notes.ogg"
    assert job["duplicate"] is False
    assert job["content_type"] == "audio/ogg"
    assert job["options"]["task"] == "translate"
    assert [s["state"] for s in job["stages"]] == ["pending", "skipped", "pending", "pending"]

    sha = hashlib.sha256(SHORT).hexdigest()
    row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    assert row["owner_id"] == "uma"
    assert row["sha256"] == sha
    assert row["size_bytes"] == len(SHORT)
    assert row["options"]["language"] == "en"
    assert row["options"]["word_timestamps"] is True
    path = local_path(row["audio_uri"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    blob = await db.fetchrow("SELECT * FROM blobs WHERE owner_id = 'uma' AND sha256 = $1", sha)
    assert blob["uri"] == row["audio_uri"]
    assert blob["content_type"] == "audio/ogg"
    user = await db.fetchrow("SELECT name, email, role FROM users WHERE id = 'uma'")
    assert (user["name"], user["email"], user["role"]) == ("Uma Upload", "uma@example.org", "user")

    ((ce, event),) = await read_topic(topics.AUDIO_UPLOADED, job_id)
    assert ce["ce_type"] == "io.mxwhisper.audio.uploaded.v1"
    assert ce["ce_source"] == "gateway"
    assert ce["ce_specversion"] == "1.0"
    assert ce["ce_id"]
    assert ce["ce_time"]
    assert event["audio_uri"] == row["audio_uri"]
    assert event["sha256"] == sha
    assert event["owner_id"] == "uma"
    assert event["filename"] == "Meeting notes.ogg"
    assert event["options"] == {
        "model": "tiny.en",
        "language": "en",
        "task": "translate",
        "word_timestamps": True,
        "initial_prompt": "Foxes and dogs.",
        "decoding": None,
        "hotwords": [],  # none given, and uma has no vocabulary (test_vocabulary.py)
        "chunking": "local",
        "speakers": False,
        "num_speakers": None,
        "min_speakers": None,
        "max_speakers": None,
    }

    ((status_ce, status),) = await read_topic(topics.JOB_STATUS, job_id)
    assert status_ce["ce_type"] == "io.mxwhisper.job.status.v1"
    assert (status["stage"], status["state"], status["progress"]) == ("transcribe", "queued", 0)
    history = await db.fetch("SELECT stage, state FROM job_events WHERE job_id = $1", job_id)
    assert [(h["stage"], h["state"]) for h in history] == [("transcribe", "queued")]


async def test_same_audio_again_is_the_same_job_unless_forced(client, token, db):
    headers = token("dora")
    first = await upload(client, headers, SOLAR, "solar.ogg")
    assert first.status_code == 202
    again = await client.post(
        "/upload", headers=headers, files={"file": ("other-name.ogg", SOLAR, "audio/ogg")}
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["duplicate"] is True
    assert again.headers["x-mxw-duplicate-of"] == first.json()["id"]

    forced = await upload(client, headers, SOLAR, "solar.ogg", force="true")
    assert forced.status_code == 202
    assert forced.json()["id"] != first.json()["id"]
    forced_query = await client.post(
        "/jobs?force=true", headers=headers, files={"file": ("s.ogg", SOLAR, "audio/ogg")}
    )
    assert forced_query.status_code == 202
    count = await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'dora'")
    assert count == 3

    # De-duplication is per owner: someone else's identical upload is their own job.
    other = await upload(client, token("dora-colleague"), SOLAR, "solar.ogg")
    assert other.status_code == 202
    assert other.json()["id"] not in {first.json()["id"], forced.json()["id"]}


async def test_text_named_wav_is_415_and_leaves_nothing(client, token, db, blob_root):
    text = b"RIFF? no. Just a shopping list: eggs, flour, salt.\n" * 50
    response = await upload(client, token("nora"), text, "list.wav")
    body = assert_problem(response, 415)
    assert "audio" in body["detail"]
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'nora'") == 0
    sha = hashlib.sha256(text).hexdigest()
    assert not (blob_root / sha[:2] / sha).exists()
    assert await db.fetchval("SELECT count(*) FROM blobs WHERE sha256 = $1", sha) == 0


async def test_over_the_limit_by_content_length_is_413(client, token, db, blob_root):
    before = stored_files(blob_root)
    response = await upload(client, token("lena"), b"\0" * (UPLOAD_LIMIT * 10), "big.ogg")
    body = assert_problem(response, 413)
    assert body["limit"] == UPLOAD_LIMIT
    assert stored_files(blob_root) == before
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'lena'") == 0


async def test_over_the_limit_while_streaming_is_413_and_no_blob(client, token, db, blob_root):
    """Chunked body without Content-Length: the limit is enforced while streaming."""
    before = stored_files(blob_root)
    boundary = "mxwtestboundary"
    piece = b"\1" * 16_384

    async def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="huge.ogg"\r\nContent-Type: audio/ogg\r\n\r\n'
        ).encode()
        for _ in range(UPLOAD_LIMIT // len(piece) + 4):
            yield piece
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**token("lena"), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = await client.post("/jobs", headers=headers, content=body())
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)
    assert stored_files(blob_root) == before
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'lena'") == 0


@pytest.mark.parametrize(
    ("form", "bad_fields"),
    [
        ({"language": "english"}, {"language"}),
        ({"task": "dance"}, {"task"}),
        ({"language": "english", "task": "dance"}, {"language", "task"}),
        ({"chunking": "by-vibes"}, {"chunking"}),
    ],
)
async def test_bad_options_are_422_and_no_job(client, token, db, form, bad_fields):
    response = await upload(client, token("otto"), SHORT, **form)
    body = assert_problem(response, 422)
    assert {e["loc"][-1] for e in body["errors"]} == bad_fields
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'otto'") == 0


async def test_missing_file_and_not_multipart(client, token):
    no_file = await client.post(
        "/jobs",
        headers=token("otto"),
        data={"language": "en"},
        files={"audio": ("a.ogg", b"x", "audio/ogg")},
    )
    assert "file" in assert_problem(no_file, 422)["detail"]
    urlencoded = await client.post("/jobs", headers=token("otto"), data={"language": "en"})
    assert_problem(urlencoded, 415)
    as_json = await client.post("/jobs", headers=token("otto"), json={"file": "x"})
    assert_problem(as_json, 415)


# ---- auth ----


def other_key_token(tmp_path: Path, kid: str | None = None) -> str:
    stranger = DevIssuer.ensure(tmp_path / "stranger")
    if kid is None:
        return stranger.mint("mallory")
    claims = jwt.decode(stranger.mint("mallory"), options={"verify_signature": False})
    return jwt.encode(
        claims, stranger.key_path.read_bytes(), algorithm="RS256", headers={"kid": kid}
    )


async def test_tokens_are_required_and_checked(client, dev_issuer, tmp_path):
    bad_tokens = {
        "expired": dev_issuer.mint("eve", ttl_s=-3600),
        "wrong audience": dev_issuer.mint("eve", audience="someone-else"),
        "wrong issuer": dev_issuer.mint("eve", issuer="https://evil.example"),
        "other key": other_key_token(tmp_path),
        "other key, our kid": other_key_token(tmp_path, kid=dev_issuer.kid),
        "garbage": "not.a.jwt",
    }
    for path in ("/jobs", "/search?q=hello", f"/jobs/{uuid.uuid4()}"):
        missing = await client.get(path)
        assert_problem(missing, 401)
        assert missing.headers["www-authenticate"].startswith("Bearer")
    for why, bad in bad_tokens.items():
        response = await client.get("/jobs", headers={"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401, why
        assert response.headers["content-type"].startswith("application/problem+json")
        assert 'error="invalid_token"' in response.headers["www-authenticate"], why
    upload_without_token = await client.post("/jobs", files={"file": ("a.ogg", SHORT)})
    assert_problem(upload_without_token, 401)
    good = await client.get("/jobs", headers={"Authorization": f"Bearer {dev_issuer.mint('eve')}"})
    assert good.status_code == 200


async def test_disabled_user_is_403(client, token, db):
    assert (await client.get("/jobs", headers=token("dan"))).status_code == 200
    await db.execute("UPDATE users SET disabled = true WHERE id = 'dan'")
    assert_problem(await client.get("/jobs", headers=token("dan")), 403)


async def test_health_and_docs_need_no_token_and_openapi_declares_bearer(client):
    assert (await client.get("/livez")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("security") == [{"bearerAuth": []}], (method, path)
    upload_body = spec["paths"]["/jobs"]["post"]["requestBody"]["content"]
    assert "file" in upload_body["multipart/form-data"]["schema"]["properties"]


# ---- jobs: reading, ownership, transcripts, audio, cancel ----


@pytest.fixture(scope="module")
async def alices_job(client, token) -> str:
    response = await upload(client, token("alice-gw"), SHORT, "fox.ogg", language="en")
    assert response.status_code == 202
    return response.json()["id"]


async def test_other_users_get_404_and_admins_see_everything(client, token, db, alices_job):
    bob = token("bob-gw")
    for method, path in [
        ("GET", f"/jobs/{alices_job}"),
        ("GET", f"/jobs/{alices_job}/transcript"),
        ("GET", f"/jobs/{alices_job}/transcript.txt"),
        ("GET", f"/jobs/{alices_job}/audio"),
        ("POST", f"/jobs/{alices_job}/cancel"),
    ]:
        response = await client.request(method, path, headers=bob)
        assert_problem(response, 404)
    unknown = await client.get(f"/jobs/{uuid.uuid4()}", headers=bob)
    assert (
        unknown.json()["title"]
        == (await client.get(f"/jobs/{alices_job}", headers=bob)).json()["title"]
    )
    bobs_list = (await client.get("/jobs", headers=bob)).json()
    assert alices_job not in {j["id"] for j in bobs_list["items"]}
    assert_problem(await client.get("/jobs?all=true", headers=bob), 403)

    admin = token("root-gw", admin=True)
    assert (await client.get(f"/jobs/{alices_job}", headers=admin)).json()["owner_id"] == "alice-gw"
    everyone = (await client.get("/jobs?all=true&limit=100", headers=admin)).json()
    assert alices_job in {j["id"] for j in everyone["items"]}

    # The role may also come from the users table instead of the token.
    await client.get("/jobs", headers=token("carol-gw"))
    await db.execute("UPDATE users SET role = 'admin' WHERE id = 'carol-gw'")
    assert (await client.get(f"/jobs/{alices_job}", headers=token("carol-gw"))).status_code == 200

    assert_problem(await client.get("/admin/users", headers=bob), 403)
    users = (await client.get("/admin/users?limit=1000", headers=admin)).json()
    alice = next(u for u in users if u["id"] == "alice-gw")
    assert alice["job_count"] == 1
    assert next(u for u in users if u["id"] == "carol-gw")["role"] == "admin"


async def test_list_is_newest_first_with_cursor_and_offset(client, token):
    headers = token("paula")
    ids = []
    for i in range(3):
        response = await upload(client, headers, SHORT, f"take{i}.ogg", force="true")
        ids.append(response.json()["id"])
    first = (await client.get("/jobs?limit=2", headers=headers)).json()
    assert [j["id"] for j in first["items"]] == [ids[2], ids[1]]
    assert first["next_cursor"]
    second = await client.get(f"/jobs?limit=2&cursor={first['next_cursor']}", headers=headers)
    assert [j["id"] for j in second.json()["items"]] == [ids[0]]
    assert second.json()["next_cursor"] is None
    by_offset = (await client.get("/jobs?limit=1&offset=1", headers=headers)).json()
    assert [j["id"] for j in by_offset["items"]] == [ids[1]]
    assert_problem(await client.get("/jobs?cursor=garbage", headers=headers), 422)


async def test_transcript_409_until_written_then_json_and_text(client, token, db, alices_job):
    alice = token("alice-gw")
    assert_problem(await client.get(f"/jobs/{alices_job}/transcript", headers=alice), 409)
    assert_problem(await client.get(f"/jobs/{alices_job}/transcript.txt", headers=alice), 409)
    job_id = uuid.UUID(alices_job)
    await db.execute(
        "INSERT INTO transcripts (job_id, language, language_probability, duration_s, model, text)"
        " VALUES ($1, 'en', 0.98, 3.4, 'tiny.en', $2)",
        job_id,
        "The quick brown fox. Jumps over the lazy dog.",
    )
    await db.executemany(
        "INSERT INTO segments (job_id, idx, start_s, end_s, text) VALUES ($1, $2, $3, $4, $5)",
        [(job_id, 0, 0.0, 1.6, " The quick brown fox."), (job_id, 1, 1.6, 3.4, " Jumps over.")],
    )
    transcript = (await client.get(f"/jobs/{alices_job}/transcript", headers=alice)).json()
    assert transcript["language"] == "en"
    assert transcript["duration"] == pytest.approx(3.4)
    assert [(s["start"], s["end"], s["text"]) for s in transcript["segments"]] == [
        (0.0, 1.6, " The quick brown fox."),
        (1.6, 3.4, " Jumps over."),
    ]
    text = await client.get(f"/jobs/{alices_job}/transcript.txt", headers=alice)
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "The quick brown fox.\nJumps over.\n"
    download = await client.get(f"/jobs/{alices_job}/download", headers=alice)
    assert download.text == text.text
    assert download.headers["content-disposition"].startswith("attachment")
    assert_problem(await client.get(f"/jobs/{alices_job}/download", headers=token("bob-gw")), 404)


async def test_audio_streams_with_content_type_and_range(client, token, alices_job):
    alice = token("alice-gw")
    whole = await client.get(f"/jobs/{alices_job}/audio", headers=alice)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "audio/ogg"
    assert whole.content == SHORT
    part = await client.get(
        f"/jobs/{alices_job}/audio", headers={**alice, "Range": "bytes=100-199"}
    )
    assert part.status_code == 206
    assert part.content == SHORT[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(SHORT)}"


async def test_job_state_comes_from_stage_rows(client, token, db):
    headers = token("stan")
    job_id = (await upload(client, headers, SOLAR, "s.ogg")).json()["id"]
    await db.execute(
        "INSERT INTO job_stages (job_id, stage, state, progress, attempts, started_at,"
        " finished_at, metrics) VALUES ($1, 'transcribe', 'done', 1, 1, now() - interval '5 s',"
        " now(), $2), ($1, 'chunk', 'running', 0.5, 2, now(), NULL, '{}')",
        uuid.UUID(job_id),
        {"rtf": 0.08},
    )
    job = (await client.get(f"/jobs/{job_id}", headers=headers)).json()
    assert job["state"] == "running"
    assert job["progress"] == pytest.approx(0.85)
    transcribe, diarize, chunk, embed = job["stages"]
    assert transcribe["state"] == "done"
    assert transcribe["metrics"] == {"rtf": 0.08}
    assert transcribe["duration_s"] == pytest.approx(5, abs=0.5)
    assert (chunk["state"], chunk["attempts"]) == ("running", 2)
    assert embed["state"] == "pending"
    assert diarize["state"] == "skipped"  # the job did not ask for speakers

    await db.execute(
        "UPDATE job_stages SET state = 'failed', error = 'model exploded' "
        "WHERE job_id = $1 AND stage = 'chunk'",
        uuid.UUID(job_id),
    )
    failed = (await client.get(f"/jobs/{job_id}", headers=headers)).json()
    assert failed["state"] == "failed"
    assert failed["error"] == "chunk failed: model exploded"
    assert_problem(await client.post(f"/jobs/{job_id}/cancel", headers=headers), 409)


async def test_cancel_queued_job(client, token, db, read_topic):
    headers = token("cass")
    job_id = (await upload(client, headers, SHORT, "c.ogg")).json()["id"]
    response = await client.post(f"/jobs/{job_id}/cancel", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert await db.fetchval(
        "SELECT cancelled_at IS NOT NULL FROM jobs WHERE id = $1", uuid.UUID(job_id)
    )
    assert (await client.get(f"/jobs/{job_id}", headers=headers)).json()["state"] == "cancelled"
    statuses = await read_topic(topics.JOB_STATUS, uuid.UUID(job_id), count=2)
    assert [(s["stage"], s["state"]) for _, s in statuses] == [
        ("transcribe", "queued"),
        ("transcribe", "cancelled"),
    ]
    assert_problem(await client.post(f"/jobs/{job_id}/cancel", headers=headers), 409)
    # A cancelled job does not swallow a re-upload of the same audio.
    again = await upload(client, headers, SHORT, "c.ogg")
    assert again.status_code == 202
    assert again.json()["id"] != job_id
    json.dumps(again.json())
