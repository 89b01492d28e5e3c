"""The chunker as a running service against the real broker and database."""

import uuid

import pytest
from asgi_lifespan import LifespanManager
from mxw_chunker.main import create_app
from mxw_chunker.settings import ChunkerSettings
from mxw_shared import topics
from mxw_shared.contracts import Envelope, TranscriptReady


@pytest.fixture(scope="module")
async def chunker(infra):
    settings = infra.settings(ChunkerSettings, "chunker", target_s=8, max_s=20, min_s=2)
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        yield app


async def add_segments(db, job_id: uuid.UUID, n: int) -> None:
    await db.executemany(
        "INSERT INTO segments (job_id, idx, start_s, end_s, text) VALUES ($1, $2, $3, $4, $5)",
        [(job_id, i, i * 3.0, i * 3.0 + 2.8, f"Point {i} about solar panels.") for i in range(n)],
    )


def ready(job_id: uuid.UUID, owner: str = "alice", n: int = 10) -> TranscriptReady:
    return TranscriptReady(
        job_id=job_id, owner_id=owner, segment_count=n, duration_s=n * 3.0, model="tiny.en"
    )


async def test_transcript_ready_becomes_chunks_and_chunks_ready(
    chunker, db, make_job, publish, read_topic, wait_for
):
    job_id = await make_job()
    await add_segments(db, job_id, 10)

    await publish(ready(job_id))

    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
        job_id,
        predicate=lambda s: s == "done",
    )
    rows = await db.fetch(
        "SELECT idx, start_s, end_s, text, keywords, owner_id FROM chunks "
        "WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    assert len(rows) >= 2
    assert rows[0]["start_s"] == 0.0
    assert rows[-1]["end_s"] == pytest.approx(9 * 3.0 + 2.8)
    assert all(r["owner_id"] == "alice" and r["keywords"] for r in rows)
    assert "Point 0 about solar panels." in rows[0]["text"]

    ((headers, body),) = await read_topic(topics.CHUNKS_READY, job_id)
    assert body["chunk_count"] == len(rows)
    assert headers["ce_type"] == "io.mxwhisper.chunks.ready.v1"
    assert headers["ce_source"] == "chunker"
    statuses = await read_topic(topics.JOB_STATUS, job_id, count=2)
    assert [b["state"] for _, b in statuses] == ["running", "running"]
    assert statuses[-1][1]["progress"] == pytest.approx(0.9)


async def test_redelivered_event_leaves_one_set_of_chunks(
    chunker, db, make_job, publish, read_topic, wait_for
):
    job_id = await make_job()
    await add_segments(db, job_id, 6)
    event = ready(job_id, n=6)
    envelope = Envelope.for_event(event, source="tests")

    await publish(event, envelope)
    await publish(event, envelope)  # same ce_id: a redelivery
    await publish(event)  # a new ce_id for the same work: a duplicate from a retrying producer

    await wait_for(
        "SELECT count(*) FROM processed_events WHERE consumer = 'chunker' AND event_id = $1",
        envelope.id,
    )
    await read_topic(topics.CHUNKS_READY, job_id, count=2, timeout_s=3)
    count = await db.fetchval("SELECT count(*) FROM chunks WHERE job_id = $1", job_id)
    idxs = await db.fetch("SELECT idx FROM chunks WHERE job_id = $1 ORDER BY idx", job_id)
    assert [r["idx"] for r in idxs] == list(range(count))
    assert len(await read_topic(topics.CHUNKS_READY, job_id, count=2, timeout_s=3)) == 1


async def test_malformed_event_goes_to_dlq_and_pipeline_keeps_flowing(
    chunker, db, make_job, kafka_producer, publish, read_topic, wait_for
):
    bad_job = uuid.uuid4()
    await kafka_producer.send_and_wait(
        topics.TRANSCRIPT_READY,
        value=b"{not json",
        key=str(bad_job).encode(),
        headers=[
            ("ce_id", b"bad-1"),
            ("ce_type", b"io.mxwhisper.transcript.ready.v1"),
            ("ce_source", b"tests"),
            ("ce_specversion", b"1.0"),
        ],
    )
    good_job = await make_job()
    await add_segments(db, good_job, 3)
    await publish(ready(good_job, n=3))

    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
        good_job,
        predicate=lambda s: s == "done",
    )
    dead = await read_topic(topics.dlq(topics.TRANSCRIPT_READY), bad_job)
    assert dead, "malformed event was not dead-lettered"
    headers, _ = dead[0]
    assert headers["ce_id"] == "bad-1"
    assert headers["x_error"].startswith("invalid event")
    assert headers["x_original_topic"] == topics.TRANSCRIPT_READY


async def test_event_whose_owner_differs_from_the_job_is_rejected(
    chunker, db, make_job, publish, read_topic
):
    job_id = await make_job(owner_id="alice")
    await add_segments(db, job_id, 3)
    await publish(ready(job_id, owner="mallory", n=3))

    dead = await read_topic(topics.dlq(topics.TRANSCRIPT_READY), job_id)
    assert dead
    assert "owner" in dead[0][0]["x_error"]
    assert await db.fetchval("SELECT count(*) FROM chunks WHERE job_id = $1", job_id) == 0
