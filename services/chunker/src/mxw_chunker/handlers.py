"""transcript.ready → chunks.ready."""

from __future__ import annotations

import asyncio

from mxw_shared.contracts import ChunksReady, Envelope, TranscriptReady
from mxw_shared.db import Connection, Pool
from mxw_shared.jobs import JobRow
from mxw_shared.pipeline import Progress, StageOutcome, StageWork

from mxw_chunker import repository
from mxw_chunker.domain import ChunkingLimits, KeywordExtractor, make_chunks
from mxw_chunker.settings import ChunkerSettings

METHOD = "local-sentence-window"


def chunk_transcript(settings: ChunkerSettings, pool: Pool) -> StageWork[TranscriptReady]:
    limits = ChunkingLimits(settings.target_s, settings.max_s, settings.min_s, settings.max_chars)
    extractor = KeywordExtractor(settings.keyword_language, settings.keywords_per_chunk)

    async def work(
        envelope: Envelope, event: TranscriptReady, job: JobRow, progress: Progress
    ) -> StageOutcome:
        segments = await repository.load_segments(pool, job.id)
        chunks = make_chunks(segments, limits)
        chunks = await asyncio.to_thread(lambda: [extractor.annotate(c) for c in chunks])

        async def persist(conn: Connection) -> None:
            await repository.replace_chunks(conn, job.id, job.owner_id, chunks, METHOD)

        return StageOutcome(
            persist=persist,
            next_event=ChunksReady(
                job_id=job.id, owner_id=job.owner_id, chunk_count=len(chunks), method=METHOD
            ),
            message=f"{len(chunks)} chunks from {len(segments)} segments",
            metrics={"chunks": len(chunks), "segments": len(segments), "method": METHOD},
        )

    return work
