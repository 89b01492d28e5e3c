"""Coverage and ordering invariants of every method over random segment lists (hypothesis)."""

import asyncio
import itertools
import json
import random
import re
import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from mxw_chunker.domain import (
    ChunkingLimits,
    KeywordExtractor,
    LocalParams,
    Segment,
    check_ranges,
    fixed_chunks,
    local_chunks,
    usable_segments,
)
from mxw_chunker.llm import LlmConfig, llm_ranges

KEYWORDS = KeywordExtractor(top=2)
WORDS = ["pasta", "star", "goal", "sail", "", "  ", "the quick fox.", "orbit of planets", "x"]


@st.composite
def segment_lists(draw: st.DrawFn) -> list[Segment]:
    n = draw(st.integers(0, 40))
    t = 0.0
    segments = []
    for i in range(n):
        t += draw(st.floats(0, 3))
        duration = draw(st.floats(0, 40))
        text = " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6)))
        segments.append(Segment(i, round(t, 3), round(t + duration, 3), text))
        t += duration
    return draw(st.permutations(segments))  # stored order is not trusted


def fake_embed(texts):
    """Deterministic pseudo-embeddings: a unit vector seeded by the text."""
    rows = []
    for text in texts:
        v = np.random.default_rng(zlib.crc32(text.encode())).normal(size=16)
        rows.append(v / np.linalg.norm(v))
    return np.asarray(rows, dtype=np.float32)


def assert_partition(segments, chunks, limits=None):
    usable = usable_segments(segments)
    position = {s.idx: p for p, s in enumerate(usable)}
    ranges = [(position[c.segment_first], position[c.segment_last]) for c in chunks]
    assert check_ranges(ranges, len(usable)) is None
    assert [c.idx for c in chunks] == list(range(len(chunks)))
    for chunk, (first, last) in zip(chunks, ranges, strict=True):
        group = usable[first : last + 1]
        assert chunk.start_s == group[0].start_s
        assert chunk.end_s == max(s.end_s for s in group)
        assert chunk.confidence is None or 0.0 <= chunk.confidence <= 1.0
        assert chunk.text.endswith(" ".join(s.text.strip() for s in group))
        if limits is not None and last > first:
            assert group[-1].end_s - group[0].start_s <= limits.max_s
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(chunks))


@settings(max_examples=40, deadline=None)
@given(segment_lists(), st.floats(5, 120), st.floats(0, 30))
def test_fixed_partitions_the_transcript(segments, window_s, overlap_s):
    chunks = fixed_chunks(segments, window_s, overlap_s, 1500, KEYWORDS)
    assert_partition(segments, chunks)


@settings(max_examples=40, deadline=None)
@given(segment_lists(), st.floats(0, 30), st.floats(30, 200), st.integers(1, 6))
def test_local_partitions_the_transcript_within_limits(segments, min_s, max_s, block):
    limits = ChunkingLimits(min_s=min_s, max_s=max_s, max_chars=2000)
    result = local_chunks(segments, fake_embed, limits, LocalParams(block=block), KEYWORDS)
    assert_partition(segments, result.chunks, limits)


class RandomPartitionLlm:
    """Answers each window with a random partition of the numbers it was shown, sometimes
    with small gaps (which the validator repairs): exercises the window merge."""

    def __init__(self, seed: int, config: LlmConfig) -> None:
        self.config = config
        self.rng = random.Random(seed)

    async def complete(self, messages):
        numbers = [int(n) for n in re.findall(r"^\[(\d+)\]", messages[-1]["content"], re.M)]
        first, last = min(numbers), max(numbers)
        cuts = sorted(
            self.rng.sample(range(first + 1, last + 1), k=min(last - first, self.rng.randint(0, 5)))
        )
        starts = [first, *cuts]
        chunks = []
        for a, b in zip(starts, [*cuts, last + 1], strict=True):
            skip = 1 if self.rng.random() < 0.2 and b - a > 1 else 0
            chunks.append({"first": a + skip, "last": b - 1})
        return json.dumps({"chunks": chunks})


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=80), min_size=1, max_size=120),
    st.integers(50, 2000),
    st.integers(0, 12),
    st.integers(0, 2**32),
)
def test_llm_windows_merge_into_a_partition(texts, window_chars, overlap, seed):
    config = LlmConfig(
        url="http://unused", model="m", window_chars=window_chars, window_overlap=overlap, max_gap=1
    )
    chunks = asyncio.run(llm_ranges(RandomPartitionLlm(seed, config), texts))  # type: ignore[arg-type]
    assert check_ranges([(c.first, c.last) for c in chunks], len(texts)) is None
