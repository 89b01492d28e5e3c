import itertools

from mxw_chunker.domain import ChunkingLimits, KeywordExtractor, Segment, make_chunks

LIMITS = ChunkingLimits(target_s=20, max_s=40, min_s=5, max_chars=400)


def seg(i: int, start: float, end: float, text: str) -> Segment:
    return Segment(i, start, end, text)


def steady_talk(n: int, length: float = 4.0) -> list[Segment]:
    return [seg(i, i * length, (i + 1) * length - 0.2, f"Sentence number {i}.") for i in range(n)]


def test_chunks_cover_every_segment_once_in_order_with_real_timestamps():
    segments = steady_talk(30)
    chunks = make_chunks(segments, LIMITS)

    covered = [i for c in chunks for i in range(c.segment_first, c.segment_last + 1)]
    assert covered == list(range(30))
    for c in chunks:
        first, last = segments[c.segment_first], segments[c.segment_last]
        assert (c.start_s, c.end_s) == (first.start_s, last.end_s)
    assert [c.idx for c in chunks] == list(range(len(chunks)))
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(chunks))


def test_chunk_closes_at_first_sentence_end_after_target():
    segments = [
        seg(0, 0, 10, "We start with"),
        seg(1, 10, 22, "a long thought."),  # reaches 22 s ≥ 20 s at a sentence end
        seg(2, 22, 30, "Then another"),
        seg(3, 30, 45, "idea entirely."),
    ]
    chunks = make_chunks(segments, LIMITS)
    assert [(c.segment_first, c.segment_last) for c in chunks] == [(0, 1), (2, 3)]
    assert chunks[0].text == "We start with a long thought."


def test_no_chunk_exceeds_max_duration_even_without_punctuation():
    segments = [seg(i, i * 5.0, i * 5.0 + 5, "and so on") for i in range(40)]
    chunks = make_chunks(segments, LIMITS)
    assert len(chunks) > 1
    assert all(c.end_s - c.start_s <= LIMITS.max_s for c in chunks)


def test_no_chunk_exceeds_max_chars():
    segments = [seg(i, i, i + 1, "word " * 30) for i in range(20)]
    chunks = make_chunks(segments, LIMITS)
    assert all(len(c.text) <= LIMITS.max_chars for c in chunks)


def test_short_tail_joins_previous_chunk():
    segments = [*steady_talk(6), seg(6, 24, 26, "Bye.")]  # 2 s tail
    chunks = make_chunks(segments, LIMITS)
    assert chunks[-1].segment_last == 6
    assert chunks[-1].end_s - chunks[-1].start_s > 2


def test_empty_and_blank_transcripts_give_no_chunks():
    assert make_chunks([], LIMITS) == []
    assert make_chunks([seg(0, 0, 1, "   ")], LIMITS) == []


def test_segments_out_of_order_are_sorted_by_time():
    segments = [seg(1, 5, 9, "second."), seg(0, 0, 4, "First.")]
    (chunk,) = make_chunks(segments, LIMITS)
    assert chunk.text == "First. second."
    assert (chunk.start_s, chunk.end_s) == (0, 9)


def test_keywords_come_from_the_text_and_name_the_topic():
    extractor = KeywordExtractor(top=3)
    text = (
        "Photosynthesis converts sunlight into chemical energy. Plants use photosynthesis "
        "in their leaves, where chlorophyll absorbs sunlight."
    )
    (chunk,) = make_chunks([seg(0, 0, 10, text)], LIMITS)
    annotated = extractor.annotate(chunk)
    assert annotated.keywords
    assert any("photosynthesis" in k.lower() or "sunlight" in k.lower() for k in annotated.keywords)
    assert annotated.topic is not None
    assert annotated.topic.lower() == annotated.keywords[0].lower()
    assert (annotated.start_s, annotated.end_s, annotated.text) == (0, 10, text)
