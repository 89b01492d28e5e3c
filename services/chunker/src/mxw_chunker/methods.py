"""Which method cuts a transcript, and falling back to the local one when the LLM fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mxw_shared.contracts import ChunkingMethod

from mxw_chunker.domain import (
    Chunk,
    ChunkingLimits,
    EmbedFn,
    KeywordExtractor,
    LocalParams,
    Segment,
    check_ranges,
    chunks_from_ranges,
    fixed_chunks,
    local_chunks,
    usable_segments,
)
from mxw_chunker.llm import LlmChunk, LlmClient, LlmConfig, LlmFailed, llm_ranges
from mxw_chunker.settings import ChunkerSettings


@dataclass(frozen=True)
class ChunkingResult:
    chunks: list[Chunk]
    requested: ChunkingMethod
    method: ChunkingMethod  # the one actually used: local, llm or fixed
    fallback_reason: str | None
    seconds: float
    embedding: str | None = None  # local only: contextual or static

    def metrics(self) -> dict[str, object]:
        return {
            "method": self.method.value,
            "embedding": self.embedding,
            "method_requested": self.requested.value,
            "fallback_reason": self.fallback_reason,
            "chunks": len(self.chunks),
            "chunking_seconds": round(self.seconds, 3),
        }


def llm_config(settings: ChunkerSettings) -> LlmConfig | None:
    if not settings.llm_url:
        return None
    return LlmConfig(
        url=settings.llm_url,
        model=settings.llm_model,
        api_key=settings.llm_api_key,
        timeout_s=settings.llm_timeout_s,
        retries=settings.llm_retries,
        response_format=settings.llm_response_format,
        window_chars=settings.llm_window_chars,
        window_overlap=settings.llm_window_overlap,
        max_gap=settings.llm_max_gap,
    )


class Chunker:
    """All three methods with the service's settings; `embed` is loaded lazily by the
    caller (a model in this process)."""

    def __init__(
        self, settings: ChunkerSettings, embed: EmbedFn, static_embed: EmbedFn | None = None
    ) -> None:
        self.settings = settings
        self.embed = embed
        self.static_embed = static_embed
        self.limits = ChunkingLimits(settings.min_s, settings.max_s, settings.max_chars)
        self.params = LocalParams(
            block=settings.local_block,
            cutoff_std=settings.local_cutoff_std,
            min_depth=settings.local_min_depth,
            full_depth=settings.local_full_depth,
        )
        # Titles and keywords: the chunk's phrases ranked by the contextual model (the static
        # vectors rank them worse than YAKE: docs/chunking.md), whichever mode cut it.
        self.keywords = KeywordExtractor(
            settings.keyword_language, settings.keywords_per_chunk, embed=embed
        )
        config = llm_config(settings)
        self.llm = LlmClient(config) if config is not None else None

    async def aclose(self) -> None:
        if self.llm is not None:
            await self.llm.aclose()

    def embedding_for(self, segments: Sequence[Segment]) -> tuple[str, EmbedFn]:
        mode = self.settings.local_embedding
        if mode == "auto":
            many = len(segments) > self.settings.local_contextual_max_segments
            mode = "static" if many else "contextual"
        if mode == "static" and self.static_embed is not None:
            return "static", self.static_embed
        return "contextual", self.embed

    def local(self, segments: Sequence[Segment]) -> list[Chunk]:
        _mode, embed = self.embedding_for(segments)
        return local_chunks(segments, embed, self.limits, self.params, self.keywords).chunks

    def fixed(self, segments: Sequence[Segment]) -> list[Chunk]:
        s = self.settings
        return fixed_chunks(
            segments, s.fixed_window_s, s.fixed_overlap_s, s.max_chars, self.keywords
        )

    async def with_llm(self, segments: Sequence[Segment]) -> list[Chunk]:
        """Raises LlmFailed (with the reason) when no usable answer came back."""
        if self.llm is None:
            raise LlmFailed("no LLM configured (MXW_LLM_URL is unset)")
        usable = usable_segments(segments)
        if not usable:
            return []
        answer = await llm_ranges(self.llm, [s.text for s in usable])
        ranges = [(c.first, c.last) for c in answer]
        reason = check_ranges(ranges, len(usable))
        if reason is not None:  # merging windows must keep the partition; never trust it blindly
            raise LlmFailed(f"merged windows are not a partition: {reason}")
        return await asyncio.to_thread(self._annotate_llm, usable, answer)

    def _annotate_llm(self, usable: list[Segment], answer: list[LlmChunk]) -> list[Chunk]:
        chunks = chunks_from_ranges(usable, [(c.first, c.last) for c in answer])
        result = []
        for chunk, llm_chunk in zip(chunks, answer, strict=True):
            # The model's own confidence, halved where the chunker had to move its range.
            confidence = llm_chunk.confidence * (0.5 if llm_chunk.repaired else 1.0)
            result.append(
                self.keywords.annotate(
                    chunk,
                    title=llm_chunk.title or None,
                    summary=llm_chunk.summary or None,
                    keywords=llm_chunk.keywords,
                    confidence=round(confidence, 3),
                )
            )
        return result

    async def run(self, segments: Sequence[Segment], requested: ChunkingMethod) -> ChunkingResult:
        started = time.monotonic()
        method = requested
        if requested is ChunkingMethod.auto:
            method = ChunkingMethod.llm if self.llm is not None else ChunkingMethod.local
        reason: str | None = None
        chunks: list[Chunk] | None = None
        if method is ChunkingMethod.llm:
            try:
                chunks = await self.with_llm(segments)
            except LlmFailed as exc:
                reason = str(exc)
                method = ChunkingMethod.local
        if chunks is None:
            work = self.fixed if method is ChunkingMethod.fixed else self.local
            chunks = await asyncio.to_thread(work, segments)
        embedding = self.embedding_for(segments)[0] if method is ChunkingMethod.local else None
        return ChunkingResult(
            chunks, requested, method, reason, time.monotonic() - started, embedding
        )
