"""Cutting a transcript into chunks: pure functions, no I/O.

Chunks are runs of whole segments, so every chunk starts where its first segment starts and
ends where its last segment ends: timestamps are real, never interpolated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yake

_SENTENCE_END = (".", "!", "?", "…", "。", "？", "！")


@dataclass(frozen=True)
class Segment:
    idx: int
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Chunk:
    idx: int
    start_s: float
    end_s: float
    text: str
    segment_first: int
    segment_last: int
    topic: str | None = None
    keywords: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ChunkingLimits:
    target_s: float = 45.0
    max_s: float = 90.0
    min_s: float = 10.0
    max_chars: int = 1500


def group_segments(segments: list[Segment], limits: ChunkingLimits) -> list[list[Segment]]:
    """Group consecutive segments: close a group at a sentence end once it is `target_s`
    long, or before it would pass `max_s` / `max_chars`. Empty segments are dropped."""
    ordered = sorted((s for s in segments if s.text.strip()), key=lambda s: (s.start_s, s.idx))
    groups: list[list[Segment]] = []
    current: list[Segment] = []
    chars = 0
    for seg in ordered:
        if current:
            duration_with = seg.end_s - current[0].start_s
            if duration_with > limits.max_s or chars + len(seg.text) + 1 > limits.max_chars:
                groups.append(current)
                current, chars = [], 0
        current.append(seg)
        chars += len(seg.text.strip()) + 1
        duration = seg.end_s - current[0].start_s
        if duration >= limits.target_s and seg.text.rstrip().endswith(_SENTENCE_END):
            groups.append(current)
            current, chars = [], 0
    if current:
        groups.append(current)
    # A short tail reads better as the end of the previous chunk, when that still fits.
    if len(groups) >= 2:
        tail, prev = groups[-1], groups[-2]
        tail_s = tail[-1].end_s - tail[0].start_s
        merged_chars = sum(len(s.text) + 1 for s in prev + tail)
        if (
            tail_s < limits.min_s
            and tail[-1].end_s - prev[0].start_s <= limits.max_s
            and merged_chars <= limits.max_chars
        ):
            groups[-2:] = [prev + tail]
    return groups


def make_chunks(segments: list[Segment], limits: ChunkingLimits) -> list[Chunk]:
    chunks = []
    for idx, group in enumerate(group_segments(segments, limits)):
        chunks.append(
            Chunk(
                idx=idx,
                start_s=group[0].start_s,
                end_s=max(s.end_s for s in group),
                text=" ".join(s.text.strip() for s in group),
                segment_first=group[0].idx,
                segment_last=group[-1].idx,
            )
        )
    return chunks


class KeywordExtractor:
    """Keywords by YAKE (statistical, unsupervised, no model to download): the best phrase
    names the chunk's topic."""

    def __init__(self, language: str = "en", top: int = 5) -> None:
        self._extractor = yake.KeywordExtractor(lan=language, n=2, top=top, dedupLim=0.7)

    def keywords(self, text: str) -> list[str]:
        scored = self._extractor.extract_keywords(text) if text.strip() else []
        return [phrase for phrase, _score in scored]

    def annotate(self, chunk: Chunk) -> Chunk:
        words = self.keywords(chunk.text)
        topic = words[0][:1].upper() + words[0][1:] if words else None
        return Chunk(
            idx=chunk.idx,
            start_s=chunk.start_s,
            end_s=chunk.end_s,
            text=chunk.text,
            segment_first=chunk.segment_first,
            segment_last=chunk.segment_last,
            topic=topic,
            keywords=tuple(words),
        )
