"""chunks.ready → chunk vectors in pgvector → embeddings.ready (the last stage: job done)."""

from __future__ import annotations

import asyncio

import numpy as np
from mxw_shared.contracts import ChunksReady, EmbeddingsReady, Envelope
from mxw_shared.db import Connection, Pool
from mxw_shared.jobs import JobRow
from mxw_shared.logging import get_logger
from mxw_shared.pipeline import Progress, StageOutcome, StageWork

from mxw_embedder import repository
from mxw_embedder.domain import batches, chunk_embedding_text
from mxw_embedder.models import Embedder, Vectors
from mxw_embedder.settings import EmbedderSettings

log = get_logger(__name__)


def embed_chunks(
    settings: EmbedderSettings, pool: Pool, embedder: Embedder
) -> StageWork[ChunksReady]:
    async def work(
        envelope: Envelope, event: ChunksReady, job: JobRow, progress: Progress
    ) -> StageOutcome:
        chunks = await repository.load_chunks(pool, job.id)
        if len(chunks) != event.chunk_count:
            # The chunks table is the truth (the event may predate a re-chunking).
            log.warning(
                "chunk count differs from the event",
                job_id=str(job.id),
                event_count=event.chunk_count,
                rows=len(chunks),
            )
        texts = [chunk_embedding_text(c) for c in chunks]
        parts: list[Vectors] = []
        done = 0
        # Batch by batch: progress shows, and a cancelled job stops at the next batch.
        for batch in batches(texts, settings.batch_size):
            parts.append(await asyncio.to_thread(embedder.embed, batch, settings.batch_size))
            done += len(batch)
            await progress(done / len(texts), f"embedded {done}/{len(texts)} chunks")
        vectors = (
            np.vstack(parts) if parts else np.zeros((0, embedder.dimensions), dtype=np.float32)
        )
        chunk_ids = [c.id for c in chunks]

        async def persist(conn: Connection) -> None:
            await repository.replace_embeddings(
                conn, job.id, job.owner_id, embedder.name, chunk_ids, vectors
            )

        return StageOutcome(
            persist=persist,
            next_event=EmbeddingsReady(
                job_id=job.id,
                owner_id=job.owner_id,
                chunk_count=len(chunks),
                model=embedder.name,
                dimensions=embedder.dimensions,
            ),
            message=f"{len(chunks)} chunks embedded with {embedder.name}"
            if chunks
            else "no chunks to embed (no speech)",
            metrics={"chunks": len(chunks), "model": embedder.name, "device": embedder.device},
        )

    return work
