"""transcript.ready → chunks.ready, with the job's chunking method."""

from __future__ import annotations

from mxw_shared import telemetry
from mxw_shared.contracts import ChunksReady, Envelope, TranscriptReady
from mxw_shared.db import Connection, Pool
from mxw_shared.jobs import JobRow
from mxw_shared.pipeline import Progress, StageOutcome, StageWork

from mxw_chunker import repository
from mxw_chunker.methods import Chunker


def chunk_transcript(chunker: Chunker, pool: Pool) -> StageWork[TranscriptReady]:
    async def work(
        envelope: Envelope, event: TranscriptReady, job: JobRow, progress: Progress
    ) -> StageOutcome:
        # Read every time: a reprocessed job (new generation) may ask for another method.
        segments = await repository.load_segments(pool, job.id)
        with telemetry.span("chunk.segment", segments=len(segments)):
            result = await chunker.run(segments, event.options.chunking)
        chunks = result.chunks
        method = result.method.value

        async def persist(conn: Connection) -> None:
            await repository.replace_chunks(conn, job.id, job.owner_id, chunks, method)

        message = f"{len(chunks)} chunks from {len(segments)} segments ({method})"
        if result.fallback_reason is not None:
            message += f"; LLM not used: {result.fallback_reason}"
        return StageOutcome(
            persist=persist,
            next_event=ChunksReady(
                job_id=job.id,
                owner_id=job.owner_id,
                generation=event.generation,
                chunk_count=len(chunks),
                method=method,
            ),
            message=message[:2000],
            metrics={**result.metrics(), "segments": len(segments)},
        )

    return work
