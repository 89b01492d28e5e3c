"""The LLM method against a real OpenAI-compatible HTTP server (see conftest.fake_llm)."""

import itertools

import pytest
from mxw_chunker.methods import Chunker
from mxw_chunker.settings import ChunkerSettings
from mxw_shared.contracts import ChunkingMethod


def chunker_for(fake_llm, embed, model: str, **overrides) -> Chunker:
    values = {"llm_url": fake_llm.url, "llm_model": model, "llm_timeout_s": 1.0, "llm_retries": 1}
    values.update(overrides)
    return Chunker(ChunkerSettings(**values), embed)


@pytest.mark.parametrize("model", ["good", "fenced", "no-json-schema"])
async def test_valid_answers_are_used(fake_llm, embed, three_topic_transcript, model):
    segments, _ = three_topic_transcript
    chunker = chunker_for(fake_llm, embed, model)
    try:
        result = await chunker.run(segments, ChunkingMethod.auto)
    finally:
        await chunker.aclose()
    assert result.method is ChunkingMethod.llm
    assert result.fallback_reason is None
    assert [(c.segment_first, c.segment_last) for c in result.chunks] == [
        (0, 15),
        (16, 31),
        (32, 47),
    ]
    assert [c.title for c in result.chunks] == ["Topic 1", "Topic 2", "Topic 3"]
    assert result.chunks[0].summary == "What segments 0 to 15 talk about."
    assert result.chunks[0].keywords == ("topic 1", "fake")
    assert result.chunks[0].confidence == pytest.approx(0.9)
    assert (result.chunks[1].start_s, result.chunks[1].end_s) == (
        segments[16].start_s,
        segments[31].end_s,
    )


async def test_json_schema_is_asked_for_and_downgraded_when_refused(
    fake_llm, embed, three_topic_transcript
):
    segments, _ = three_topic_transcript
    chunker = chunker_for(fake_llm, embed, "no-json-schema")
    before = len(fake_llm.requests)
    try:
        await chunker.run(segments, ChunkingMethod.llm)
    finally:
        await chunker.aclose()
    formats = [r.get("response_format", {}).get("type") for r in fake_llm.requests[before:]]
    assert formats == ["json_schema", "json_object"]


async def test_a_small_gap_is_repaired_and_lowers_confidence(
    fake_llm, embed, three_topic_transcript
):
    segments, _ = three_topic_transcript
    chunker = chunker_for(fake_llm, embed, "small-gap")
    try:
        result = await chunker.run(segments, ChunkingMethod.llm)
    finally:
        await chunker.aclose()
    assert result.method is ChunkingMethod.llm
    assert [(c.segment_first, c.segment_last) for c in result.chunks] == [
        (0, 16),
        (17, 31),
        (32, 47),
    ]
    assert result.chunks[0].confidence == pytest.approx(0.45)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("malformed", "answer is not JSON"),
        ("partial", "partial coverage: segments 32-47 are not in any chunk"),
        ("overlap", "overlaps the previous one"),
        ("out-of-range", "is outside 0-47"),
        ("slow", "no answer within 1 s"),
        ("error500", "HTTP 500"),
    ],
)
async def test_bad_answers_fall_back_to_local_with_the_reason(
    fake_llm, embed, three_topic_transcript, model, reason
):
    segments, _ = three_topic_transcript
    chunker = chunker_for(fake_llm, embed, model, max_s=150, max_chars=3000)
    before = len(fake_llm.requests)
    try:
        result = await chunker.run(segments, ChunkingMethod.llm)
    finally:
        await chunker.aclose()
    assert result.method is ChunkingMethod.local
    assert result.requested is ChunkingMethod.llm
    assert result.fallback_reason is not None
    assert reason in result.fallback_reason
    assert "[segments 0-47]" in result.fallback_reason
    assert result.chunks
    assert result.chunks[-1].segment_last == 47
    assert result.metrics()["fallback_reason"] == result.fallback_reason
    # bounded: transport failures are retried once, bad content is not retried
    asked = len(fake_llm.requests) - before
    assert asked == (2 if model in ("slow", "error500") else 1)


async def test_long_transcripts_are_windowed_and_merged(fake_llm, embed, make_segments):
    texts = [f"Sentence {i} of a long talk about many things." for i in range(120)]
    segments = make_segments(texts)
    chunker = chunker_for(fake_llm, embed, "good", llm_window_chars=2000, llm_window_overlap=5)
    before = len(fake_llm.requests)
    try:
        result = await chunker.run(segments, ChunkingMethod.llm)
    finally:
        await chunker.aclose()
    assert result.method is ChunkingMethod.llm
    assert len(fake_llm.requests) - before >= 3
    ranges = [(c.segment_first, c.segment_last) for c in result.chunks]
    assert ranges[0][0] == 0
    assert ranges[-1][1] == 119
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    # every later window started where the kept chunks ended, overlapping the one before
    shown = [r["messages"][-1]["content"].split("\n", 1)[0] for r in fake_llm.requests[before:]]
    assert shown[0].startswith("Segments 0 to ")


async def test_api_key_is_sent_as_bearer(fake_llm, embed, three_topic_transcript):
    segments, _ = three_topic_transcript
    chunker = chunker_for(fake_llm, embed, "good", llm_api_key="s3cret")
    before = len(fake_llm.requests)
    try:
        await chunker.run(segments, ChunkingMethod.llm)
    finally:
        await chunker.aclose()
    assert [r["_authorization"] for r in fake_llm.requests[before:]] == ["Bearer s3cret"]
    assert "s3cret" not in repr(chunker.settings)


async def test_auto_without_an_llm_is_local_and_llm_without_one_records_why(
    embed, three_topic_transcript
):
    segments, _ = three_topic_transcript
    chunker = Chunker(ChunkerSettings(), embed)
    auto = await chunker.run(segments, ChunkingMethod.auto)
    assert auto.method is ChunkingMethod.local
    assert auto.fallback_reason is None
    llm = await chunker.run(segments, ChunkingMethod.llm)
    assert llm.method is ChunkingMethod.local
    assert llm.fallback_reason == "no LLM configured (MXW_LLM_URL is unset)"
    fixed = await chunker.run(segments, ChunkingMethod.fixed)
    assert fixed.method is ChunkingMethod.fixed
    assert all(c.end_s - c.start_s <= 60 for c in fixed.chunks)
