"""Pure functions: partitions, fixed windows, boundary choice, metrics, LLM answers."""

import itertools
import json

import numpy as np
import pytest
from mxw_chunker.domain import (
    ChunkingLimits,
    KeywordExtractor,
    LocalParams,
    Segment,
    boundaries_of,
    check_ranges,
    choose_boundaries,
    chunks_from_ranges,
    depth_scores,
    fixed_chunks,
    fixed_ranges,
    gap_similarities,
    overlap_prefix,
    pk,
    usable_segments,
    window_diff,
)
from mxw_chunker.llm import LlmFailed, parse_answer


def steady(n: int, length: float = 4.0) -> list[Segment]:
    return [
        Segment(i, i * length, (i + 1) * length - 0.2, f"Sentence number {i}.") for i in range(n)
    ]


def test_check_ranges_accepts_a_partition_and_names_each_defect():
    assert check_ranges([(0, 2), (3, 3), (4, 9)], 10) is None
    assert check_ranges([], 0) is None
    assert "not covered" in check_ranges([(0, 2), (4, 9)], 10)
    assert "overlaps" in check_ranges([(0, 4), (4, 9)], 10)
    assert "outside" in check_ranges([(0, 4), (5, 10)], 10)
    assert "reversed" in check_ranges([(3, 0)], 10)
    assert "not covered" in check_ranges([(0, 4)], 10)


def test_chunks_take_timestamps_from_their_first_and_last_segment():
    segments = steady(6)
    chunks = chunks_from_ranges(segments, [(0, 2), (3, 5)])
    assert [(c.start_s, c.end_s) for c in chunks] == [(0.0, 11.8), (12.0, 23.8)]
    assert [c.idx for c in chunks] == [0, 1]
    assert chunks[1].text == "Sentence number 3. Sentence number 4. Sentence number 5."
    with pytest.raises(ValueError, match="not a partition"):
        chunks_from_ranges(segments, [(0, 2)])


def test_usable_segments_drop_blank_text_and_sort_by_time():
    segments = [Segment(1, 5, 9, "second."), Segment(0, 0, 4, "First."), Segment(2, 9, 10, "  ")]
    assert [s.idx for s in usable_segments(segments)] == [0, 1]


def test_fixed_windows_close_before_passing_the_window_and_the_char_limit():
    ranges = fixed_ranges(steady(30), window_s=20, max_chars=10_000)
    assert ranges[0] == (0, 4)  # 5 × 4 s = 19.8 s; a sixth segment would end at 23.8 s
    assert check_ranges(ranges, 30) is None
    by_chars = fixed_ranges(steady(30), window_s=1000, max_chars=60)
    assert all(
        sum(len(f"Sentence number {i}.") + 1 for i in range(a, b + 1)) <= 60 for a, b in by_chars
    )


def test_fixed_overlap_is_in_the_text_only_and_timestamps_partition():
    segments = steady(12)
    chunks = fixed_chunks(
        segments, window_s=20, overlap_s=8, max_chars=10_000, keywords=KeywordExtractor()
    )
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(chunks))
    assert chunks[1].start_s == 20.0
    # the 8 s before 20.0 s: segments 3 (12 s) and 4 (16 s) are repeated at the front
    assert chunks[1].text.startswith("Sentence number 3. Sentence number 4. Sentence number 5.")
    assert overlap_prefix(segments, 0, 8) == ""
    assert [c.confidence for c in chunks] == [0.5, 0.0, 0.5]


def test_depth_marks_the_valley_between_two_topics():
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    vectors = np.stack([a] * 6 + [b] * 6)
    sims = gap_similarities(vectors, block=3)
    depths = depth_scores(sims)
    assert int(np.argmax(depths)) == 5  # between unit 5 and unit 6
    assert depths[5] == pytest.approx(2.0)


def test_boundaries_follow_depth_within_the_limits():
    segments = steady(20)  # 4 s each
    depths = np.zeros(19)
    depths[9] = 1.0  # a clear change after segment 9
    limits = ChunkingLimits(min_s=8, max_s=1000, max_chars=100_000)
    assert choose_boundaries(segments, depths, limits, LocalParams()) == [(0, 9), (10, 19)]
    # max_s forces more cuts; they still include the clear one
    tight = ChunkingLimits(min_s=8, max_s=30, max_chars=100_000)
    ranges = choose_boundaries(segments, depths, tight, LocalParams())
    assert (0, 9) not in ranges
    assert any(last == 9 for _, last in ranges)
    assert all(segments[b].end_s - segments[a].start_s <= 30 for a, b in ranges)


def test_a_single_segment_longer_than_max_s_stays_whole():
    segments = [Segment(0, 0, 5, "a."), Segment(1, 5, 200, "b."), Segment(2, 200, 205, "c.")]
    ranges = choose_boundaries(segments, np.zeros(2), ChunkingLimits(1, 90, 1500), LocalParams())
    assert (1, 1) in ranges
    assert check_ranges(ranges, 3) is None


def test_pk_and_window_diff_on_known_cases():
    ref = boundaries_of([(0, 9), (10, 19)])
    assert pk(ref, ref) == 0.0
    assert window_diff(ref, ref) == 0.0
    none = [0] * 19
    # k = 5: windows straddling the true boundary are 5 of the 15
    assert pk(ref, none) == pytest.approx(5 / 15)
    assert window_diff(ref, none) == pytest.approx(5 / 15)
    shifted = boundaries_of([(0, 10), (11, 19)])
    assert 0 < pk(ref, shifted) < pk(ref, none)


# ---- the LLM answer validator ----


def answer(*ranges: tuple[int, int], confidence: float = 0.8) -> str:
    return json.dumps(
        {
            "chunks": [
                {
                    "first": a,
                    "last": b,
                    "title": f"T{a}",
                    "summary": "s",
                    "keywords": ["k"],
                    "confidence": confidence,
                }
                for a, b in ranges
            ]
        }
    )


def test_a_valid_answer_is_taken_as_given():
    chunks = parse_answer(answer((10, 14), (15, 29)), 10, 29, max_gap=2)
    assert [(c.first, c.last, c.repaired) for c in chunks] == [(10, 14, False), (15, 29, False)]
    assert chunks[0].title == "T10"
    assert chunks[0].keywords == ("k",)


def test_fenced_json_and_a_bare_list_are_accepted():
    fenced = "```json\n" + answer((0, 4)) + "\n```"
    assert [(c.first, c.last) for c in parse_answer(fenced, 0, 4, 0)] == [(0, 4)]
    bare = json.dumps([{"first": 0, "last": 4}])
    assert [(c.first, c.last) for c in parse_answer(bare, 0, 4, 0)] == [(0, 4)]


def test_small_gaps_are_repaired_and_marked():
    chunks = parse_answer(answer((1, 4), (6, 8)), 0, 10, max_gap=2)
    assert [(c.first, c.last, c.repaired) for c in chunks] == [(0, 5, True), (6, 10, True)]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"chunks": [{"first": 0, "la', "not JSON"),
        ('{"topics": []}', "does not match the schema"),
        ('{"chunks": []}', "no chunks"),
        (answer((0, 4), (4, 9)), "overlaps"),
        (answer((0, 4), (5, 12)), "outside"),
        (answer((0, 2), (7, 9)), "partial coverage: segments 3-6"),
        (answer((0, 4)), "partial coverage: segments 5-9"),
        (answer((5, 9), (0, 4)), "partial coverage: segments 0-4"),
        (answer((4, 2)), "reversed"),
        ('{"chunks": [{"first": "a", "last": 3}]}', "does not match the schema"),
    ],
)
def test_bad_answers_are_refused_with_a_reason(content, reason):
    with pytest.raises(LlmFailed, match=reason):
        parse_answer(content, 0, 9, max_gap=2)


def test_confidence_is_clipped_to_0_1():
    (chunk,) = parse_answer(answer((0, 3), confidence=7), 0, 3, 0)
    assert chunk.confidence == 1.0


def test_keywords_and_title_come_from_the_text():
    extractor = KeywordExtractor(top=3)
    text = (
        "Photosynthesis converts sunlight into chemical energy. Plants use photosynthesis "
        "in their leaves, where chlorophyll absorbs sunlight."
    )
    (chunk,) = chunks_from_ranges([Segment(0, 0, 10, text)], [(0, 0)])
    annotated = extractor.annotate(chunk, confidence=0.7)
    assert any("photosynthesis" in k.lower() or "sunlight" in k.lower() for k in annotated.keywords)
    assert annotated.title is not None
    assert annotated.title.lower() == annotated.keywords[0].lower()
    assert annotated.summary == text
    assert annotated.confidence == 0.7
