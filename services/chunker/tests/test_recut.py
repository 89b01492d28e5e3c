"""The re-cut after an edit (mxw_chunker.recut): which chunks are cut again, from which
segments, and the rows that change. Pure: no model, no database."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mxw_chunker.domain import (
    Chunk,
    KeywordExtractor,
    Segment,
    chunks_from_ranges,
    fixed_chunks,
    fixed_ranges,
    usable_segments,
)
from mxw_chunker.recut import (
    Run,
    Span,
    StoredChunk,
    affected_chunks,
    apply_recut,
    chunks_revision,
    plan_recut,
    with_prefix,
)


def segments(n: int, step: float = 3.0, length: float = 2.8) -> list[Segment]:
    return [Segment(i, i * step, i * step + length, f"Point {i} about panels.") for i in range(n)]


def stored(chunks: list[Chunk], revision: int = 0, first_id: int = 100) -> list[StoredChunk]:
    return [
        StoredChunk(first_id + c.idx, c.idx, c.start_s, c.end_s, c.text, revision) for c in chunks
    ]


def cut(segs: list[Segment], ranges: list[tuple[int, int]]) -> list[StoredChunk]:
    return stored(chunks_from_ranges(segs, ranges))


def one_chunk_per_run(plan_runs: tuple[Run, ...]) -> list[list[Chunk]]:
    """A stand-in for Chunker.run: each run becomes one chunk."""
    return [chunks_from_ranges(list(r.segments), [(0, len(r.segments) - 1)]) for r in plan_runs]


def edit_text(segs: list[Segment], i: int, text: str) -> list[Segment]:
    return [replace(s, text=text) if s.idx == i else s for s in segs]


def test_a_text_edit_recuts_only_its_chunk():
    segs = segments(12)
    chunks = cut(segs, [(0, 3), (4, 7), (8, 11)])  # 0-11.8, 12-23.8, 24-35.8
    edited = edit_text(segs, 5, "Point five about solar panels, corrected.")

    plan = plan_recut(edited, chunks, [(15.0, 17.8)])

    assert [c.id for c in plan.deleted] == [101]
    assert [c.id for c in plan.kept] == [100, 102]
    (run,) = plan.runs
    assert [s.idx for s in run.segments] == [4, 5, 6, 7]
    assert run.first == 4
    assert run.prefix == ""
    change = apply_recut(plan, one_chunk_per_run(plan.runs))
    assert change.delete_ids == (101,)
    assert change.renumber == ()  # one chunk became one: nobody moves
    assert [(c.idx, c.start_s, c.end_s) for c in change.insert] == [(1, 12.0, 23.8)]
    assert "corrected" in change.insert[0].text
    assert (change.replaced, change.recut, change.kept, change.chunk_count) == (1, 1, 2, 3)


def test_a_split_at_a_chunk_edge_recuts_that_chunk_and_renumbers_the_later_ones():
    segs = segments(12)
    chunks = cut(segs, [(0, 3), (4, 7), (8, 11)])
    # Segment 7 (21-23.8, the end of chunk 1) split in two: every later idx moves up by one.
    a = Segment(7, 21.0, 22.4, "Point 7")
    b = Segment(8, 22.4, 23.8, "about panels.")
    edited = [*segs[:7], a, b, *(replace(s, idx=s.idx + 1) for s in segs[8:])]

    plan = plan_recut(edited, chunks, [(21.0, 23.8)])

    assert [c.id for c in plan.deleted] == [101]
    assert [c.id for c in plan.kept] == [100, 102]  # chunk 2 is found by its time, not idx
    # The run is cut into two chunks: the last one moves from idx 2 to 3.
    (run,) = plan.runs
    halves = chunks_from_ranges(list(run.segments), [(0, 2), (3, 4)])
    change = apply_recut(plan, [halves])
    assert change.renumber == ((102, 3),)
    assert [c.idx for c in change.insert] == [1, 2]
    assert change.chunk_count == 4


def test_a_merge_across_a_chunk_edge_recuts_both_chunks_into_one_run():
    segs = segments(12)
    chunks = cut(segs, [(0, 3), (4, 7), (8, 11)])
    merged = Segment(3, 9.0, 14.8, "Point 3 about panels. Point 4 about panels.")
    edited = [*segs[:3], merged, *(replace(s, idx=s.idx - 1) for s in segs[5:])]

    plan = plan_recut(edited, chunks, [(9.0, 14.8)])

    assert [c.id for c in plan.deleted] == [100, 101]
    assert [c.id for c in plan.kept] == [102]
    (run,) = plan.runs
    assert run.segments[0].start_s == 0.0
    assert run.segments[-1].end_s == 23.8
    change = apply_recut(plan, one_chunk_per_run(plan.runs))  # two became one
    assert change.renumber == ((102, 1),)
    assert [c.idx for c in change.insert] == [0]
    assert change.chunk_count == 2


def test_a_span_in_a_gap_joins_the_nearest_chunk_and_its_segment_is_cut_with_it():
    segs = [
        *segments(4),
        *(
            replace(s, idx=s.idx + 5, start_s=s.start_s + 30, end_s=s.end_s + 30)
            for s in segments(4)
        ),
    ]  # 0-11.8, then 30-41.8
    silent = Segment(4, 26.0, 27.0, "")
    chunks = cut(segs, [(0, 3), (4, 7)])
    # A person typed what was said in the silent stretch (26-27 s): nearer the second chunk.
    spoken = replace(silent, text="Someone coughs.")
    edited = sorted([*segs, spoken], key=lambda s: s.start_s)

    plan = plan_recut(edited, chunks, [(26.0, 27.0)])

    assert [c.id for c in plan.deleted] == [101]
    (run,) = plan.runs
    assert run.segments[0].text == "Someone coughs."
    assert len(run.segments) == 5
    assert affected_chunks(chunks, [(13.0, 14.0)]) == {0}  # nearer the first
    assert affected_chunks(chunks, [(50.0, 51.0)]) == {1}  # after the last
    assert affected_chunks(chunks, [(20.9, 20.9)]) == {0}  # a tie: the earlier


def test_the_fixed_method_recuts_the_following_chunk_and_matches_a_full_cut():
    keywords = KeywordExtractor()
    segs = segments(20)  # fixed windows of 9 s with 3 s of overlap: chunks of 3 segments
    full = fixed_chunks(segs, 9.0, 3.0, 1500, keywords)
    chunks = stored(full)
    assert len(chunks) >= 5
    edited = edit_text(segs, 4, "Point four, which the speaker meant.")

    plan = plan_recut(edited, chunks, [(12.0, 14.8)], fixed_overlap_s=3.0)

    # Chunk 1 holds segment 4; chunk 2 repeats the end of chunk 1 (its overlap prefix).
    assert [c.id for c in plan.deleted] == [101, 102]
    (run,) = plan.runs
    assert run.prefix == segs[2].text  # the end of chunk 0, kept
    new = with_prefix(fixed_chunks(list(run.segments), 9.0, 3.0, 1500, keywords), run.prefix)
    change = apply_recut(plan, [new])
    expected = fixed_chunks(edited, 9.0, 3.0, 1500, keywords)
    assert [c.text for c in change.insert] == [c.text for c in expected[1:3]]
    assert [c.idx for c in change.insert] == [1, 2]
    assert change.kept == len(chunks) - 2


def test_a_kept_chunk_that_no_longer_matches_its_segments_is_recut_too():
    segs = segments(12)
    chunks = cut(segs, [(0, 3), (4, 7), (8, 11)])
    edited = edit_text(edit_text(segs, 5, "Changed."), 10, "Changed as well.")
    # Only the first change's span is known (say a revision row is missing): the second
    # chunk's text differs from its segments, so it is cut again all the same.
    plan = plan_recut(edited, chunks, [(15.0, 17.8)])
    assert [c.id for c in plan.deleted] == [101, 102]
    assert len(plan.runs) == 1  # contiguous: one run over chunks 1 and 2


def test_no_span_and_matching_chunks_change_nothing():
    segs = segments(12)
    chunks = cut(segs, [(0, 3), (4, 7), (8, 11)])
    plan = plan_recut(segs, chunks, [])
    assert plan.deleted == ()
    assert plan.runs == ()
    change = apply_recut(plan, [])
    assert not change.changed
    assert change.kept == 3


def test_renumbering_keeps_idx_in_time_order_when_runs_grow_and_shrink():
    segs = segments(16)
    chunks = cut(segs, [(0, 3), (4, 7), (8, 11), (12, 15)])
    edited = edit_text(edit_text(segs, 1, "First changed."), 9, "Third changed.")
    plan = plan_recut(edited, chunks, [(3.0, 5.8), (27.0, 29.8)])
    assert [c.id for c in plan.deleted] == [100, 102]
    first, third = plan.runs
    cuts = [
        chunks_from_ranges(list(first.segments), [(0, 0), (1, 1), (2, 3)]),  # 1 → 3
        chunks_from_ranges(list(third.segments), [(0, 3)]),  # 1 → 1
    ]
    change = apply_recut(plan, cuts)
    assert change.renumber == ((101, 3), (103, 5))
    assert [c.idx for c in change.insert] == [0, 1, 2, 4]
    final = sorted(
        [(c.idx, c.start_s) for c in change.insert]
        + [(new, next(c.start_s for c in chunks if c.id == i)) for i, new in change.renumber]
    )
    assert [i for i, _ in final] == list(range(change.chunk_count)) == list(range(6))
    assert [s for _, s in final] == sorted(s for _, s in final)


def test_the_chunks_revision_is_the_newest_of_the_set():
    segs = segments(8)
    chunks = cut(segs, [(0, 3), (4, 7)])
    assert chunks_revision([]) is None
    assert chunks_revision(chunks) == 0
    assert chunks_revision([replace(chunks[0], revision=3), replace(chunks[1], revision=2)]) == 3


def test_apply_refuses_cuts_that_do_not_match_the_runs():
    segs = segments(8)
    chunks = cut(segs, [(0, 3), (4, 7)])
    plan = plan_recut(edit_text(segs, 0, "x"), chunks, [(0.0, 2.8)])
    with pytest.raises(ValueError, match="1 runs but 0 cuts"):
        apply_recut(plan, [])


# ---- properties over random transcripts and random edits (hypothesis) ----

PHRASES = ["solar panels", "the roof", "a pinch of salt", "penalties", "orbit", "yes"]


@st.composite
def edited_transcripts(draw: st.DrawFn) -> tuple[list[Segment], list[Segment], list[Span]]:
    """Sequential segments (some blank), and the same after random edits of words, blanking,
    filling a blank one, splitting or merging, with the spans each edit touched."""
    n = draw(st.integers(1, 30))
    t, before = 0.0, []
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.2, 1.5]))
        duration = draw(st.floats(0.5, 6.0))
        blank = draw(st.integers(0, 9)) == 0
        text = "" if blank else " ".join(draw(st.lists(st.sampled_from(PHRASES), min_size=1)))
        before.append(Segment(i, round(t, 3), round(t + duration, 3), text))
        t += duration
    after, spans = list(before), []
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(after) - 1))
        seg = after[pos]
        kind = draw(st.sampled_from(["words", "blank", "fill", "split", "merge"]))
        if kind == "split" and seg.end_s - seg.start_s > 0.2:
            mid = round((seg.start_s + seg.end_s) / 2, 3)
            after[pos : pos + 1] = [replace(seg, end_s=mid), replace(seg, start_s=mid, text="and")]
        elif kind == "merge" and pos + 1 < len(after):
            nxt = after[pos + 1]
            text = f"{seg.text} {nxt.text}".strip()
            after[pos : pos + 2] = [replace(seg, end_s=nxt.end_s, text=text)]
        elif kind == "blank":
            after[pos] = replace(seg, text="")
        else:
            after[pos] = replace(seg, text=draw(st.sampled_from(PHRASES)) + " again")
        spans.append((seg.start_s, max(seg.end_s, after[pos].end_s)))
    after = [replace(s, idx=i) for i, s in enumerate(after)]
    known = draw(st.lists(st.sampled_from(spans), unique=True)) if spans else []
    return before, after, known


def windows(segs: Sequence[Segment]) -> list[Chunk]:
    """A stand-in method: time windows of 9 s (deterministic, no model)."""
    usable = usable_segments(segs)
    return chunks_from_ranges(usable, fixed_ranges(usable, 9.0, 10**9))


@settings(max_examples=150, deadline=None)
@given(edited_transcripts())
def test_after_any_edits_the_chunks_cover_every_segment_once_in_order(case):
    before, after, spans = case
    chunks = stored(windows(before))
    plan = plan_recut(after, chunks, spans)  # some spans may be unknown: the check finds them
    change = apply_recut(plan, [windows(r.segments) for r in plan.runs])

    final = {c.idx: c.text for c in change.insert}
    moved = dict(change.renumber)
    deleted = set(change.delete_ids)
    for c in chunks:
        if c.id not in deleted:
            final[moved.get(c.id, c.idx)] = c.text
    assert sorted(final) == list(range(change.chunk_count))
    assert change.kept + change.recut == change.chunk_count
    usable = usable_segments(after)
    assert " ".join(final[i] for i in sorted(final)) == " ".join(s.text.strip() for s in usable)


@settings(max_examples=30, deadline=None)
@given(edited_transcripts(), st.sampled_from([0.0, 2.0, 5.0]))
def test_a_fixed_recut_after_word_edits_equals_a_full_cut(case, overlap_s):
    before, _after, _spans = case
    # Words changed only (times and blanks as they were): the windows stay where they were.
    after = [
        replace(s, text=f"{s.text} indeed") if s.text and s.idx % 3 == 0 else s for s in before
    ]
    spans = [(s.start_s, s.end_s) for s in before if s.text and s.idx % 3 == 0]
    keywords = KeywordExtractor(top=1)

    def cut(segs: Sequence[Segment]) -> list[Chunk]:
        return fixed_chunks(segs, 9.0, overlap_s, 10**9, keywords)

    chunks = stored(cut(before))
    plan = plan_recut(after, chunks, spans, fixed_overlap_s=overlap_s)
    change = apply_recut(plan, [with_prefix(cut(r.segments), r.prefix) for r in plan.runs])
    texts = {c.idx: c.text for c in change.insert}
    moved = dict(change.renumber)
    for c in chunks:
        if c.id not in set(change.delete_ids):
            texts[moved.get(c.id, c.idx)] = c.text
    assert [texts[i] for i in sorted(texts)] == [c.text for c in cut(after)]
