"""The local method with the real all-MiniLM-L6-v2 on a three-topic transcript."""

from mxw_chunker.domain import (
    ChunkingLimits,
    KeywordExtractor,
    LocalParams,
    boundaries_of,
    local_chunks,
    pk,
    window_diff,
)


def test_local_boundaries_land_on_the_topic_changes(embed, three_topic_transcript):
    segments, truth = three_topic_transcript
    # Limits loose enough that each ~100 s topic may stay one chunk: what is measured is
    # where the method cuts, not where max_s forces it to.
    limits = ChunkingLimits(min_s=15, max_s=150, max_chars=3000)
    result = local_chunks(segments, embed, limits, LocalParams(), KeywordExtractor())
    found = [(c.segment_first, c.segment_last) for c in result.chunks]
    ref, hyp = boundaries_of(truth), boundaries_of(found)
    score_pk, score_wd = pk(ref, hyp), window_diff(ref, hyp)
    print(f"three topics: chunks {found}, Pk {score_pk:.3f}, WindowDiff {score_wd:.3f}")
    # k = 8 segments here. No boundary at all scores Pk ≈ 0.40 and one boundary off by
    # one segment adds ≈ 0.025: Pk ≤ 0.1 means both changes found within a couple of
    # segments and at most one spurious cut.
    assert score_pk <= 0.1
    assert score_wd <= 0.15
    for boundary in (15, 31):  # each true change has a cut within two segments
        assert any(abs(last - boundary) <= 2 for _, last in found[:-1]), found
    # The deepest valleys are the true changes: their chunks are confident at that end.
    starts = {first: c for c, (first, _) in zip(result.chunks, found, strict=True)}
    for first in (16, 32):
        if first in starts:
            assert starts[first].confidence is not None
            assert starts[first].confidence >= 0.75


def test_local_titles_summaries_and_keywords_describe_the_topic(embed, three_topic_transcript):
    segments, _truth = three_topic_transcript
    limits = ChunkingLimits(min_s=15, max_s=150, max_chars=3000)
    chunks = local_chunks(segments, embed, limits, LocalParams(), KeywordExtractor()).chunks
    first, last = chunks[0], chunks[-1]
    assert first.summary in {s.text for s in segments[:16]}  # extractive: one of its sentences
    words = " ".join([first.title or "", *first.keywords, first.summary or ""]).lower()
    assert any(w in words for w in ("pasta", "sauce", "garlic", "water", "spaghetti", "pot"))
    words = " ".join([last.title or "", *last.keywords, last.summary or ""]).lower()
    assert any(
        w in words for w in ("match", "goal", "referee", "penalty", "league", "ball", "club")
    )


def test_static_mode_also_finds_the_topic_changes(embed, three_topic_transcript):
    segments, truth = three_topic_transcript
    limits = ChunkingLimits(min_s=15, max_s=150, max_chars=3000)
    result = local_chunks(segments, embed.static, limits, LocalParams(), KeywordExtractor())
    found = [(c.segment_first, c.segment_last) for c in result.chunks]
    score_pk = pk(boundaries_of(truth), boundaries_of(found))
    print(f"three topics, static: chunks {found}, Pk {score_pk:.3f}")
    assert score_pk <= 0.15  # one boundary off by up to ~3 segments, or one spurious cut
    for boundary in (15, 31):
        assert any(abs(last - boundary) <= 3 for _, last in found[:-1]), found


async def test_auto_switches_to_static_for_long_transcripts(embed, make_segments):
    from mxw_chunker.methods import Chunker
    from mxw_chunker.settings import ChunkerSettings
    from mxw_shared.contracts import ChunkingMethod

    chunker = Chunker(ChunkerSettings(local_contextual_max_segments=30), embed, embed.static)
    short = make_segments([f"Sentence {i} about boats." for i in range(30)])
    long = make_segments([f"Sentence {i} about boats." for i in range(31)])
    assert (await chunker.run(short, ChunkingMethod.local)).embedding == "contextual"
    assert (await chunker.run(long, ChunkingMethod.local)).embedding == "static"
