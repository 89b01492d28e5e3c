"""The running chunker with an LLM configured (a real OpenAI-compatible server run by the
test): answers are used when valid; every bad one falls back to local, and the reason is
on the job (job_stages.metrics, shown by GET /jobs/{id}, and the status message)."""

import uuid

import pytest
from asgi_lifespan import LifespanManager
from mxw_chunker.main import create_app
from mxw_chunker.settings import ChunkerSettings
from mxw_shared.contracts import ChunkingMethod, JobOptions, TranscriptReady


@pytest.fixture(scope="module")
async def llm_chunker(infra, fake_llm, embed):
    settings = infra.settings(
        ChunkerSettings,
        "chunker",
        llm_url=fake_llm.url,
        llm_model="test-model",
        llm_timeout_s=1.0,
        llm_retries=1,
        max_s=150,
        max_chars=3000,
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60):
        yield app


async def run_job(db, make_job, publish, wait_for, texts, method=ChunkingMethod.auto):
    job_id = await make_job()
    await db.executemany(
        "INSERT INTO segments (job_id, idx, start_s, end_s, text) VALUES ($1, $2, $3, $4, $5)",
        [(job_id, i, i * 5.0, i * 5.0 + 4.8, t) for i, t in enumerate(texts)],
    )
    await publish(
        TranscriptReady(
            job_id=job_id,
            owner_id="alice",
            segment_count=len(texts),
            duration_s=len(texts) * 5.0,
            model="tiny.en",
            options=JobOptions(chunking=method),
        )
    )
    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
        job_id,
        predicate=lambda s: s == "done",
    )
    metrics = await db.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", job_id
    )
    rows = await db.fetch(
        "SELECT idx, title, summary, confidence, method, start_s, end_s FROM chunks"
        " WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    return job_id, metrics, rows


def topic_texts(three_topic_transcript, scenario: str) -> list[str]:
    segments, _ = three_topic_transcript
    texts = [s.text for s in segments]
    texts[0] = f"{texts[0]} #{scenario}"  # tells the test server how to answer
    return texts


async def test_a_valid_answer_is_used(
    llm_chunker, db, make_job, publish, wait_for, three_topic_transcript
):
    _job, metrics, rows = await run_job(
        db, make_job, publish, wait_for, topic_texts(three_topic_transcript, "good")
    )
    assert metrics["method"] == "llm"
    assert metrics["method_requested"] == "auto"
    assert metrics["fallback_reason"] is None
    assert [r["title"] for r in rows] == ["Topic 1", "Topic 2", "Topic 3"]
    assert {r["method"] for r in rows} == {"llm"}
    assert (rows[1]["start_s"], rows[1]["end_s"]) == (16 * 5.0, 31 * 5.0 + 4.8)
    assert rows[0]["confidence"] == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        ("malformed", "answer is not JSON"),
        ("partial", "partial coverage"),
        ("overlap", "overlaps the previous one"),
        ("slow", "no answer within 1 s"),
        ("error500", "HTTP 500"),
    ],
)
async def test_a_bad_answer_falls_back_to_local_and_the_job_says_why(
    llm_chunker, db, make_job, publish, wait_for, three_topic_transcript, scenario, reason
):
    job_id, metrics, rows = await run_job(
        db, make_job, publish, wait_for, topic_texts(three_topic_transcript, scenario)
    )
    assert metrics["method"] == "local"
    assert metrics["method_requested"] == "auto"
    assert reason in metrics["fallback_reason"]
    assert {r["method"] for r in rows} == {"local"}
    assert rows[0]["start_s"] == 0.0
    assert rows[-1]["end_s"] == pytest.approx(47 * 5.0 + 4.8)
    messages = [
        r["message"] or ""
        for r in await db.fetch(
            "SELECT message FROM job_events WHERE job_id = $1 AND stage = 'chunk'", job_id
        )
    ]
    assert any("LLM not used" in m and reason in m for m in messages), messages


async def test_local_and_fixed_asked_for_do_not_call_the_llm(
    llm_chunker, db, make_job, publish, wait_for, three_topic_transcript, fake_llm
):
    before = len(fake_llm.requests)
    texts = topic_texts(three_topic_transcript, "good")
    _j, local, _rows = await run_job(db, make_job, publish, wait_for, texts, ChunkingMethod.local)
    _j, fixed, _rows = await run_job(db, make_job, publish, wait_for, texts, ChunkingMethod.fixed)
    assert (local["method"], fixed["method"]) == ("local", "fixed")
    assert len(fake_llm.requests) == before
    assert uuid.UUID(str(_j))
