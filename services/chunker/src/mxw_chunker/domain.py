"""Cutting a transcript into chunks: pure functions, no I/O.

Every method decides only *where* a transcript is cut, as inclusive ranges of positions in
the list of usable segments (non-empty, ordered by time). Chunks are then runs of whole
segments, so a chunk starts where its first segment starts and ends where its last segment
ends: timestamps are real, never interpolated, and the ranges of one transcript always
cover it completely, in order, without overlap (`check_ranges`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import yake
from mxw_shared.logging import get_logger
from mxw_shared.speakers import speakers_in

from mxw_chunker import titles

log = get_logger(__name__)

Vectors = npt.NDArray[np.float32]
EmbedFn = Callable[[Sequence[str]], Vectors]
Range = tuple[int, int]  # inclusive positions in the usable-segment list

_SUMMARY_CHARS = 240


@dataclass(frozen=True)
class Segment:
    idx: int
    start_s: float
    end_s: float
    text: str
    speaker: str | None = None  # the speaker label, when the job has speakers


@dataclass(frozen=True)
class Chunk:
    idx: int
    start_s: float
    end_s: float
    text: str
    segment_first: int
    segment_last: int
    title: str | None = None
    summary: str | None = None
    keywords: tuple[str, ...] = field(default=())
    confidence: float | None = None
    speakers: tuple[str, ...] = field(default=())  # labels, in the order they first speak


@dataclass(frozen=True)
class ChunkingLimits:
    """Bounds that keep chunks searchable: a chunk is cut before it passes `max_s` or
    `max_chars` (a single longer segment stays whole), and chunks shorter than `min_s` are
    avoided unless the transcript itself is that short."""

    min_s: float = 15.0
    max_s: float = 90.0
    max_chars: int = 1500


def usable_segments(segments: Sequence[Segment]) -> list[Segment]:
    """Segments with text, in time order: the units every method cuts between."""
    return sorted((s for s in segments if s.text.strip()), key=lambda s: (s.start_s, s.idx))


def check_ranges(ranges: Sequence[Range], n: int) -> str | None:
    """Why `ranges` is not a partition of positions 0..n-1 (in order, contiguous, no
    overlap, in range), or None when it is."""
    if n == 0:
        return None if not ranges else "ranges given for an empty transcript"
    if not ranges:
        return "no ranges"
    expected = 0
    for first, last in ranges:
        if first > last:
            return f"range {first}-{last} is reversed"
        if first < 0 or last >= n:
            return f"range {first}-{last} is outside 0-{n - 1}"
        if first < expected:
            return f"range {first}-{last} overlaps the previous one"
        if first > expected:
            return f"segments {expected}-{first - 1} are not covered"
        expected = last + 1
    if expected != n:
        return f"segments {expected}-{n - 1} are not covered"
    return None


def chunks_from_ranges(segments: Sequence[Segment], ranges: Sequence[Range]) -> list[Chunk]:
    """Chunks for a partition of `segments` (usable segments), each the text of its own
    segments only (the fixed method prepends its overlap afterwards: `overlap_prefix`)."""
    reason = check_ranges(ranges, len(segments))
    if reason is not None:
        raise ValueError(f"not a partition: {reason}")
    chunks = []
    for idx, (first, last) in enumerate(ranges):
        group = segments[first : last + 1]
        text = " ".join(s.text.strip() for s in group)
        start_s, end_s = group[0].start_s, max(s.end_s for s in group)
        chunks.append(
            Chunk(
                idx=idx,
                start_s=start_s,
                end_s=end_s,
                text=text,
                segment_first=group[0].idx,
                segment_last=group[-1].idx,
                speakers=speakers_in(group, start_s, end_s),
            )
        )
    return chunks


# ---- fixed: time windows aligned to segments ----


def fixed_ranges(segments: Sequence[Segment], window_s: float, max_chars: int) -> list[Range]:
    """Consecutive windows of about `window_s`: a segment starts a new window when the
    current one would pass `window_s` (or `max_chars`)."""
    ranges: list[Range] = []
    first = 0
    chars = 0
    for pos, seg in enumerate(segments):
        size = len(seg.text.strip()) + 1
        if pos > first and (
            seg.end_s - segments[first].start_s > window_s or chars + size > max_chars
        ):
            ranges.append((first, pos - 1))
            first, chars = pos, 0
        chars += size
    if segments:
        ranges.append((first, len(segments) - 1))
    return ranges


def overlap_prefix(segments: Sequence[Segment], first: int, overlap_s: float) -> str:
    """Text of the segments that end within `overlap_s` before position `first`: what a
    fixed chunk repeats of its predecessor so a phrase across a cut is found in both."""
    if first == 0 or overlap_s <= 0:
        return ""
    cut = segments[first].start_s - overlap_s
    pos = first
    while pos > 0 and segments[pos - 1].start_s >= cut:
        pos -= 1
    return " ".join(s.text.strip() for s in segments[pos:first])


# ---- local: semantic segmentation over sentence embeddings (TextTiling on vectors) ----


def gap_similarities(vectors: Vectors, block: int) -> npt.NDArray[np.float64]:
    """Cosine similarity across each gap g (between units g and g+1) of the mean vector of
    up to `block` units before it and the mean vector of up to `block` units after it."""
    n = len(vectors)
    if n < 2:
        return np.zeros(0)
    sums = np.vstack(
        [np.zeros((1, vectors.shape[1])), np.cumsum(vectors, axis=0, dtype=np.float64)]
    )
    gaps = np.arange(1, n)
    lo = np.maximum(gaps - block, 0)
    hi = np.minimum(gaps + block, n)
    left = sums[gaps] - sums[lo]
    right = sums[hi] - sums[gaps]
    norms = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
    norms[norms == 0] = 1.0
    result: npt.NDArray[np.float64] = np.einsum("ij,ij->i", left, right) / norms
    return result


def depth_scores(similarities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """TextTiling depth: how far each gap's similarity lies below the peaks reached by
    climbing to its left and to its right. Deep valleys are changes of topic."""
    n = len(similarities)
    depths = np.zeros(n)
    for g in range(n):
        left = g
        while left > 0 and similarities[left - 1] >= similarities[left]:
            left -= 1
        right = g
        while right < n - 1 and similarities[right + 1] >= similarities[right]:
            right += 1
        depths[g] = similarities[left] + similarities[right] - 2 * similarities[g]
    return depths


@dataclass(frozen=True)
class LocalParams:
    block: int = 6  # units on each side of a gap in the block comparison
    cutoff_std: float = 1.0  # a gap is a boundary candidate above mean + cutoff_std·std
    min_depth: float = 0.1  # ... and above this absolute depth
    full_depth: float = 0.4  # depth that counts as a certain change of topic (confidence)
    short_penalty: float = 1.0  # cost of a chunk shorter than min_s


def choose_boundaries(
    segments: Sequence[Segment],
    depths: npt.NDArray[np.float64],
    limits: ChunkingLimits,
    params: LocalParams,
) -> list[Range]:
    """The cut that maximises the summed depth above the cut-off of its boundaries, under
    the limits (dynamic programming over boundary positions). Gaps below the cut-off cost
    their shortfall, so they are only chosen when `max_s`/`max_chars` force a cut, and
    then at the deepest one available."""
    n = len(segments)
    if n == 0:
        return []
    if n == 1:
        return [(0, 0)]
    cutoff = max(params.min_depth, float(depths.mean() + params.cutoff_std * depths.std()))
    gain = depths - cutoff  # gain[g]: cutting between units g and g+1
    chars = np.cumsum([0] + [len(s.text.strip()) + 1 for s in segments])
    best = np.full(n + 1, -np.inf)
    back = np.zeros(n + 1, dtype=np.int64)
    best[0] = 0.0
    for j in range(1, n + 1):  # a chunk [i, j) ends at unit j-1
        end_s = segments[j - 1].end_s
        for i in range(j - 1, -1, -1):
            duration = end_s - segments[i].start_s
            if j - i > 1 and (duration > limits.max_s or chars[j] - chars[i] > limits.max_chars):
                break
            score = best[i] + (gain[i - 1] if i > 0 else 0.0)
            if duration < limits.min_s and not (i == 0 and j == n):
                score -= params.short_penalty
            if score > best[j]:
                best[j], back[j] = score, i
    ranges: list[Range] = []
    j = n
    while j > 0:
        i = int(back[j])
        ranges.append((i, j - 1))
        j = i
    ranges.reverse()
    return ranges


def boundary_confidence(ranges: Sequence[Range], strength: Callable[[int], float]) -> list[float]:
    """Per chunk, the mean certainty of its two ends being changes of topic: 1 at the start
    and end of the transcript, `strength(g)` for a cut after unit g."""
    result = []
    for k, (first, last) in enumerate(ranges):
        start = 1.0 if k == 0 else strength(first - 1)
        end = 1.0 if k == len(ranges) - 1 else strength(last)
        result.append(round((start + end) / 2, 3))
    return result


def most_central(vectors: Vectors) -> int:
    """Position of the vector closest to the group's centroid (its most typical unit)."""
    centroid = vectors.mean(axis=0)
    return int(np.argmax(vectors @ centroid))


def one_line(text: str, limit: int = _SUMMARY_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + "…"


@dataclass(frozen=True)
class LocalResult:
    chunks: list[Chunk]
    depths: npt.NDArray[np.float64]


def local_chunks(
    segments: Sequence[Segment],
    embed: EmbedFn,
    limits: ChunkingLimits,
    params: LocalParams,
    keywords: KeywordExtractor,
) -> LocalResult:
    """Semantic segmentation: embed each segment, cut where topical similarity drops
    (TextTiling depth on block-averaged embeddings) within the limits; title and keywords
    from the chunk's phrases (`keywords`), summary = the chunk's most central segment,
    confidence = clarity of its boundaries."""
    usable = usable_segments(segments)
    if not usable:
        return LocalResult([], np.zeros(0))
    vectors = embed([s.text.strip() for s in usable])
    depths = depth_scores(gap_similarities(vectors, params.block))
    ranges = choose_boundaries(usable, depths, limits, params)

    def strength(gap: int) -> float:
        return float(np.clip(depths[gap] / params.full_depth, 0.0, 1.0))

    confidences = boundary_confidence(ranges, strength)
    chunks = []
    for chunk, (first, last), confidence in zip(
        chunks_from_ranges(usable, ranges), ranges, confidences, strict=True
    ):
        central = usable[first + most_central(vectors[first : last + 1])]
        chunks.append(
            keywords.annotate(chunk, summary=one_line(central.text), confidence=confidence)
        )
    return LocalResult(chunks, depths)


def fixed_chunks(
    segments: Sequence[Segment],
    window_s: float,
    overlap_s: float,
    max_chars: int,
    keywords: KeywordExtractor,
) -> list[Chunk]:
    """Time windows aligned to segments. Timestamps and segment ranges never overlap (the
    chunks partition the transcript); the overlap is in the text only: each chunk's text
    begins with the last `overlap_s` seconds of its predecessor. Confidence: only the
    transcript's own start and end are known topic edges; clock-placed cuts count 0."""
    usable = usable_segments(segments)
    ranges = fixed_ranges(usable, window_s, max_chars)
    confidences = boundary_confidence(ranges, lambda _gap: 0.0)
    chunks = []
    for chunk, (first, _last), confidence in zip(
        chunks_from_ranges(usable, ranges), ranges, confidences, strict=True
    ):
        own = chunk.text
        prefix = overlap_prefix(usable, first, overlap_s)
        annotated = keywords.annotate(chunk, summary=one_line(own), confidence=confidence)
        chunks.append(replace(annotated, text=f"{prefix} {own}" if prefix else own))
    return chunks


# ---- keywords and titles ----


class KeywordExtractor:
    """Title and keywords of a chunk. With `embed` (the chunker's embedding model): the
    chunk's own phrases ranked by similarity to it (mxw_chunker.titles). Without: YAKE
    (statistical, no model), whose best phrase titles the chunk."""

    def __init__(self, language: str = "en", top: int = 5, embed: EmbedFn | None = None) -> None:
        self._extractor = yake.KeywordExtractor(lan=language, n=2, top=top, dedupLim=0.7)
        self._top = top
        self.embed = embed

    def keywords(self, text: str) -> list[str]:
        scored = self._extractor.extract_keywords(text) if text.strip() else []
        return [phrase for phrase, _score in scored]

    def titled(self, text: str) -> tuple[str | None, list[str]]:
        """(title, keywords) from the text alone."""
        if self.embed is not None:
            try:
                found = titles.title_and_keywords(text, self.embed, self._top)
                return found.title, list(found.keywords)
            except Exception as exc:  # the model failed to load: YAKE's titles, not none
                log.warning("embedding titles failed; YAKE titles", error=str(exc))
        words = self.keywords(text)
        return (titles.capitalised(words[0]) if words else None), words

    def annotate(
        self,
        chunk: Chunk,
        *,
        summary: str | None = None,
        confidence: float | None = None,
        title: str | None = None,
        keywords: Sequence[str] = (),
    ) -> Chunk:
        """Fill in title/keywords from the text where not given (an LLM's are kept)."""
        words = list(keywords)
        if not words:
            own_title, words = self.titled(chunk.text)
            title = own_title if title is None else title
        elif title is None:
            title = titles.capitalised(words[0])
        return replace(
            chunk,
            title=title,
            summary=summary if summary is not None else one_line(chunk.text),
            keywords=tuple(words),
            confidence=confidence,
        )


# ---- boundary quality: Pk and WindowDiff (Beeferman et al. 1999; Pevzner & Hearst 2002) ----


def boundaries_of(ranges: Sequence[Range]) -> list[int]:
    """0/1 per gap: 1 where a range ends before the next begins."""
    if not ranges:
        return []
    n = ranges[-1][1] + 1
    marks = [0] * (n - 1)
    for _first, last in ranges[:-1]:
        marks[last] = 1
    return marks


def default_k(reference: Sequence[int]) -> int:
    """Half the mean reference segment length, at least 2 (the usual choice)."""
    n = len(reference) + 1
    return max(2, round(n / (sum(reference) + 1) / 2))


def pk(reference: Sequence[int], hypothesis: Sequence[int], k: int | None = None) -> float:
    """Probability that two units k apart are wrongly judged same/different segment."""
    if len(reference) != len(hypothesis):
        raise ValueError("reference and hypothesis differ in length")
    k = k or default_k(reference)
    n = len(reference) + 1
    if n <= k:
        return 0.0
    errors = 0
    for i in range(n - k):
        same_ref = not any(reference[i : i + k])
        same_hyp = not any(hypothesis[i : i + k])
        errors += same_ref != same_hyp
    return errors / (n - k)


def window_diff(reference: Sequence[int], hypothesis: Sequence[int], k: int | None = None) -> float:
    """Share of windows of k units where the number of boundaries differs."""
    if len(reference) != len(hypothesis):
        raise ValueError("reference and hypothesis differ in length")
    k = k or default_k(reference)
    n = len(reference) + 1
    if n <= k:
        return 0.0
    errors = sum(sum(reference[i : i + k]) != sum(hypothesis[i : i + k]) for i in range(n - k))
    return errors / (n - k)
