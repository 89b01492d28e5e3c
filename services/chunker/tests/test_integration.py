"""The chunker as a running service against the real broker and database."""

import itertools
import uuid

import pytest
from asgi_lifespan import LifespanManager
from mxw_chunker.domain import KeywordExtractor, Segment, fixed_chunks
from mxw_chunker.main import create_app
from mxw_chunker.settings import ChunkerSettings
from mxw_shared import outbox, topics
from mxw_shared.contracts import (
    ChunkingMethod,
    EditOperation,
    Envelope,
    JobOptions,
    TranscriptEdited,
    TranscriptReady,
)


@pytest.fixture(scope="module")
async def chunker(infra, embed):
    settings = infra.settings(ChunkerSettings, "chunker", max_s=20, min_s=2)
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        yield app


async def add_segments(db, job_id: uuid.UUID, n: int) -> None:
    await db.executemany(
        "INSERT INTO segments (job_id, idx, start_s, end_s, text) VALUES ($1, $2, $3, $4, $5)",
        [(job_id, i, i * 3.0, i * 3.0 + 2.8, f"Point {i} about solar panels.") for i in range(n)],
    )


def ready(
    job_id: uuid.UUID,
    owner: str = "alice",
    n: int = 10,
    method: ChunkingMethod = ChunkingMethod.auto,
    generation: int = 0,
) -> TranscriptReady:
    return TranscriptReady(
        job_id=job_id,
        owner_id=owner,
        segment_count=n,
        duration_s=n * 3.0,
        model="tiny.en",
        options=JobOptions(chunking=method),
        generation=generation,
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


async def stage_done(wait_for, job_id: uuid.UUID, generation: int = 0) -> None:
    await wait_for(
        "SELECT state || ':' || generation FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
        job_id,
        predicate=lambda s: s == f"done:{generation}",
    )


async def test_chunks_carry_title_summary_confidence_and_the_method_is_recorded(
    chunker, db, make_job, publish, wait_for
):
    job_id = await make_job()
    await add_segments(db, job_id, 10)
    await publish(ready(job_id))
    await stage_done(wait_for, job_id)

    rows = await db.fetch(
        "SELECT title, topic, summary, confidence, method FROM chunks WHERE job_id = $1", job_id
    )
    assert rows
    assert all(r["title"] and r["summary"] and r["method"] == "local" for r in rows)
    assert all(r["topic"] == r["title"] for r in rows)
    assert all(0 <= r["confidence"] <= 1 for r in rows)
    metrics = await db.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", job_id
    )
    assert metrics["method"] == "local"
    assert metrics["method_requested"] == "auto"
    assert metrics["fallback_reason"] is None
    assert metrics["chunks"] == len(rows)
    assert metrics["segments"] == 10


async def test_the_jobs_method_is_honoured_and_reprocessing_replaces_the_chunks(
    chunker, db, make_job, publish, read_topic, wait_for
):
    job_id = await make_job()
    await add_segments(db, job_id, 40)  # 120 s
    await publish(ready(job_id, n=40, method=ChunkingMethod.llm))
    await stage_done(wait_for, job_id)
    metrics = await db.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", job_id
    )
    assert metrics["method"] == "local"
    assert metrics["fallback_reason"] == "no LLM configured (MXW_LLM_URL is unset)"
    messages = await db.fetch(
        "SELECT message FROM job_events WHERE job_id = $1 AND stage = 'chunk'", job_id
    )
    assert any(
        "(local); LLM not used: no LLM configured" in (r["message"] or "") for r in messages
    ), messages

    # Reprocessing from the chunk stage: the gateway moves the job to generation 1 and
    # publishes a new transcript.ready with other options.
    await db.execute("UPDATE jobs SET generation = 1 WHERE id = $1", job_id)
    await publish(ready(job_id, n=40, method=ChunkingMethod.fixed, generation=1))
    await stage_done(wait_for, job_id, generation=1)
    rows = await db.fetch(
        "SELECT idx, method, start_s, end_s, confidence FROM chunks WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    assert {r["method"] for r in rows} == {"fixed"}
    assert [r["idx"] for r in rows] == list(range(len(rows)))
    assert all(r["end_s"] - r["start_s"] <= 60 for r in rows)
    assert all(a["end_s"] <= b["start_s"] for a, b in itertools.pairwise(rows))
    metrics = await db.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", job_id
    )
    assert metrics["method"] == "fixed"
    assert metrics["method_requested"] == "fixed"
    announced = await read_topic(topics.CHUNKS_READY, job_id, count=2)
    assert [(b["method"], b["generation"]) for _, b in announced] == [("local", 0), ("fixed", 1)]


async def test_a_job_with_speakers_waits_for_them_and_its_chunks_record_who_speaks(
    chunker, db, make_job, publish, wait_for
):
    job_id = await make_job(speakers=True)
    # Ten segments of 3 s; the one at 12-15 s is where Alice hands over to Bob, mid-segment.
    await db.executemany(
        "INSERT INTO segments (job_id, idx, start_s, end_s, text, words)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (
                job_id,
                i,
                i * 3.0,
                i * 3.0 + 2.8,
                f"Point {i} about solar panels.",
                [
                    {"start": i * 3.0 + k * 0.7, "end": i * 3.0 + k * 0.7 + 0.6, "word": w}
                    for k, w in enumerate([f" Point {i}", " about", " solar", " panels."])
                ],
            )
            for i in range(10)
        ],
    )
    await db.executemany(
        "INSERT INTO speaker_turns (job_id, idx, start_s, end_s, speaker)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(job_id, 0, 0.0, 13.3, "SPEAKER_02"), (job_id, 1, 13.3, 30.0, "SPEAKER_01")],
    )
    early = await publish(ready(job_id))
    await wait_for(
        "SELECT count(*) FROM processed_events WHERE consumer = 'chunker' AND event_id = $1",
        early.id,
    )
    # The speakers are not done yet: the chunker waits for them (the diarizer's completion
    # sends the transcript again).
    assert (
        await db.fetchval(
            "SELECT count(*) FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", job_id
        )
        == 0
    )
    await db.execute(
        "INSERT INTO job_stages (job_id, stage, state, progress) VALUES ($1, 'diarize', 'done', 1)",
        job_id,
    )
    await publish(ready(job_id))
    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
        job_id,
        predicate=lambda s: s == "done",
    )
    chunks = await db.fetch(
        "SELECT start_s, end_s, text, speakers FROM chunks WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    assert len(chunks) >= 2
    for chunk in chunks:
        if chunk["end_s"] <= 13.3:
            assert chunk["speakers"] == ["SPEAKER_02"]
        elif chunk["start_s"] >= 13.3:
            assert chunk["speakers"] == ["SPEAKER_01"]
        else:  # the chunk with the hand-over: both, in the order they speak
            assert chunk["speakers"] == ["SPEAKER_02", "SPEAKER_01"]
            # The segment was cut where the speaker changed, between its words.
            assert "Point 4 about solar panels." in chunk["text"].replace(
                "about solar", "about solar"
            )
    assert {s for c in chunks for s in c["speakers"]} == {"SPEAKER_01", "SPEAKER_02"}


async def edit_segment(
    db, job_id: uuid.UUID, revision: int, idx: int, text: str
) -> TranscriptEdited:
    """A person's correction, written the way the gateway does (one transaction): the
    segment, the transcript's revision, the revision row, a new run of the job from the
    chunk stage (its chunk and embed rows reset) announced by transcript.edited."""
    async with db.acquire() as conn, conn.transaction():
        start_s, end_s, before = await conn.fetchrow(
            "UPDATE segments s SET text = $3 FROM segments old"
            " WHERE s.job_id = $1 AND s.idx = $2 AND old.job_id = s.job_id AND old.idx = s.idx"
            " RETURNING s.start_s, s.end_s, old.text",
            job_id,
            idx,
            text,
        )
        await conn.execute(
            "UPDATE transcripts SET revision = $2 WHERE job_id = $1", job_id, revision
        )
        await conn.execute(
            "INSERT INTO transcript_revisions (job_id, revision, author, operation, summary,"
            " start_s, end_s, change) VALUES ($1, $2, 'alice', 'text', 'a word', $3, $4, $5)",
            job_id,
            revision,
            start_s,
            end_s,
            {"before": [{"idx": idx, "text": before}], "after": [{"idx": idx, "text": text}]},
        )
        generation = await conn.fetchval(
            "UPDATE jobs SET generation = generation + 1 WHERE id = $1 RETURNING generation",
            job_id,
        )
        await conn.execute(
            "DELETE FROM job_stages WHERE job_id = $1 AND stage IN ('chunk', 'embed')", job_id
        )
        await conn.execute(
            "UPDATE job_stages SET generation = $2 WHERE job_id = $1", job_id, generation
        )
        event = TranscriptEdited(
            job_id=job_id,
            owner_id="alice",
            generation=generation,
            revision=revision,
            operation=EditOperation.text,
            start_s=start_s,
            end_s=end_s,
            segment_count=await conn.fetchval(
                "SELECT count(*) FROM segments WHERE job_id = $1", job_id
            ),
        )
        await outbox.enqueue(conn, event, source="gateway")
    return event


async def test_an_edit_recuts_only_the_chunk_it_touched(
    chunker, db, make_job, read_topic, publish, wait_for
):
    job_id = await make_job()
    await add_segments(db, job_id, 40)  # 120 s, chunks of at most 20 s
    await db.execute(
        "INSERT INTO transcripts (job_id, duration_s, model, text) VALUES ($1, 120, 'tiny.en', '')",
        job_id,
    )
    await publish(ready(job_id, n=40))
    await stage_done(wait_for, job_id)
    query = (
        "SELECT id, idx, start_s, end_s, text, revision FROM chunks WHERE job_id = $1 ORDER BY idx"
    )
    before = await db.fetch(query, job_id)
    assert {r["revision"] for r in before} == {0}
    (hit,) = [r for r in before if r["start_s"] <= 60.0 <= r["end_s"]]  # segment 20: 60-62.8 s

    await edit_segment(db, job_id, 1, 20, "Point twenty about solar panels on the barn.")
    await stage_done(wait_for, job_id, generation=1)

    after = await db.fetch(query, job_id)
    kept = {r["id"]: r for r in before if r["id"] != hit["id"]}
    assert hit["id"] not in {r["id"] for r in after}
    # Every other chunk keeps its row: same id, span and text.
    for r in after:
        if r["id"] in kept:
            old = kept[r["id"]]
            assert (r["start_s"], r["end_s"], r["text"]) == (
                old["start_s"],
                old["end_s"],
                old["text"],
            )
    assert set(kept) <= {r["id"] for r in after}
    new = [r for r in after if r["id"] not in kept]
    assert new[0]["start_s"] == hit["start_s"]
    assert new[-1]["end_s"] == hit["end_s"]
    assert any("on the barn" in r["text"] for r in new)
    assert [r["idx"] for r in after] == list(range(len(after)))
    assert all(a["end_s"] <= b["start_s"] for a, b in itertools.pairwise(after))
    # The new chunks are cut from revision 1; the kept ones still from revision 0.
    assert {r["id"]: r["revision"] for r in after} == {
        r["id"]: 0 if r["id"] in kept else 1 for r in after
    }
    metrics = await db.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", job_id
    )
    assert (metrics["recut"], metrics["kept"], metrics["replaced"]) == (
        len(new),
        len(before) - 1,
        1,
    )
    announced = await read_topic(topics.CHUNKS_READY, job_id, count=2)
    assert [(b["generation"], b["changed_only"], b["chunk_count"]) for _, b in announced] == [
        (0, False, len(before)),
        (1, True, len(after)),
    ]

    # A stale edit (the chunks are cut from a newer revision than the event's) changes
    # nothing, but the run still ends.
    await db.execute("UPDATE chunks SET revision = 5 WHERE job_id = $1", job_id)
    await edit_segment(db, job_id, 2, 3, "Point three, unheard by the chunker.")
    await stage_done(wait_for, job_id, generation=2)
    assert [tuple(r) for r in await db.fetch(query, job_id)] == [(*tuple(r)[:5], 5) for r in after]
    metrics = await db.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", job_id
    )
    assert metrics["stale"] is True


async def test_an_edit_of_a_job_without_chunks_cuts_it_in_full(
    chunker, db, make_job, read_topic, wait_for
):
    job_id = await make_job()
    await add_segments(db, job_id, 10)
    await db.execute(
        "INSERT INTO transcripts (job_id, duration_s, model, text) VALUES ($1, 30, 'tiny.en', '')",
        job_id,
    )
    await edit_segment(db, job_id, 1, 4, "Point four about wind turbines.")
    await stage_done(wait_for, job_id, generation=1)
    rows = await db.fetch("SELECT idx, revision FROM chunks WHERE job_id = $1 ORDER BY idx", job_id)
    assert [r["idx"] for r in rows] == list(range(len(rows)))
    assert {r["revision"] for r in rows} == {1}  # the transcript's revision, as read
    ((_, body),) = await read_topic(topics.CHUNKS_READY, job_id)
    assert body["changed_only"] is False  # the embedder replaces the job's vectors
    assert body["chunk_count"] == len(rows)
    metrics = await db.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", job_id
    )
    assert (metrics["recut"], metrics["kept"]) == (len(rows), 0)


async def test_a_fixed_jobs_edit_recuts_its_chunk_and_the_next_as_a_full_cut_would(
    chunker, db, make_job, publish, wait_for
):
    job_id = await make_job(chunking="fixed")
    await add_segments(db, job_id, 100)  # 300 s: fixed windows of 60 s
    await db.execute(
        "INSERT INTO transcripts (job_id, duration_s, model, text) VALUES ($1, 300, 'tiny.en', '')",
        job_id,
    )
    await publish(ready(job_id, n=100, method=ChunkingMethod.fixed))
    await stage_done(wait_for, job_id)
    query = "SELECT id, start_s, end_s, text FROM chunks WHERE job_id = $1 ORDER BY idx"
    before = await db.fetch(query, job_id)
    assert len(before) >= 4
    hit = next(p for p, r in enumerate(before) if r["start_s"] <= 115.0 <= r["end_s"])

    # Segment 38 (114-116.8 s): within the last 10 s of its chunk, the next one's prefix.
    await edit_segment(db, job_id, 1, 38, "Point 38 about solar panels on the shed.")
    await stage_done(wait_for, job_id, generation=1)

    after = await db.fetch(query, job_id)
    # The chunk over 115 s and the one after it (whose text repeats its end) are new.
    assert {r["id"] for r in after}.isdisjoint({before[hit]["id"], before[hit + 1]["id"]})
    kept = [r["id"] for r in before if r["id"] in {a["id"] for a in after}]
    assert kept == [r["id"] for p, r in enumerate(before) if p not in (hit, hit + 1)]
    # The texts are what a full fixed cut of the corrected transcript makes.
    settings = chunker.state.runtime.settings
    segments = [
        Segment(i, i * 3.0, i * 3.0 + 2.8, f"Point {i} about solar panels.") for i in range(100)
    ]
    segments[38] = Segment(38, 114.0, 116.8, "Point 38 about solar panels on the shed.")
    full = fixed_chunks(
        segments,
        settings.fixed_window_s,
        settings.fixed_overlap_s,
        settings.max_chars,
        KeywordExtractor(),
    )
    assert [r["text"] for r in after] == [c.text for c in full]
    assert "on the shed" in after[hit + 1]["text"]  # its overlap prefix
