"""chunks.ready → chunk vectors in pgvector → embeddings.ready (the last stage: job done)."""

from __future__ import annotations

import numpy as np
from mxw_shared import telemetry
from mxw_shared.contracts import ChunksReady, EmbeddingsReady, Envelope
from mxw_shared.db import Connection, Pool
from mxw_shared.jobs import JobRow
from mxw_shared.logging import get_logger
from mxw_shared.pipeline import Progress, StageOutcome, StageWork

from mxw_embedder import repository
from mxw_embedder.batcher import MicroBatcher
from mxw_embedder.domain import batches, chunk_embedding_text, longest_first
from mxw_embedder.models import Vectors
from mxw_embedder.settings import EmbedderSettings

log = get_logger(__name__)


def embed_chunks(
    settings: EmbedderSettings, pool: Pool, batcher: MicroBatcher
) -> StageWork[ChunksReady]:
    embedder = batcher.embedder

    async def work(
        envelope: Envelope, event: ChunksReady, job: JobRow, progress: Progress
    ) -> StageOutcome:
        if event.changed_only:
            # After an edit: only the re-cut chunks lack a vector; the others keep theirs.
            chunks, total = await repository.load_unembedded(pool, job.id, embedder.name)
        else:
            chunks = await repository.load_chunks(pool, job.id)
            total = len(chunks)
        if total != event.chunk_count:
            # The chunks table is the truth (the event may predate a re-chunking).
            log.warning(
                "chunk count differs from the event",
                job_id=str(job.id),
                event_count=event.chunk_count,
                rows=total,
            )
        texts = [chunk_embedding_text(c) for c in chunks]
        # Longest first, so each slice pads little (as one encode() call over all texts
        # would); vectors go back to chunk order below.
        order = longest_first(texts)
        parts: list[Vectors] = []
        done = 0
        # Slice by slice through the shared micro-batcher: other jobs' slices and queries
        # share model calls with these, progress shows, and a cancelled job stops at the
        # next slice.
        with telemetry.span("embed.chunks", model=embedder.name, chunks=len(texts)):
            for batch in batches([texts[i] for i in order], settings.batch_size):
                parts.append(await batcher.embed(batch))
                done += len(batch)
                await progress(done / len(texts), f"embedded {done}/{len(texts)} chunks")
        vectors = np.zeros((len(texts), embedder.dimensions), dtype=np.float32)
        if parts:
            vectors[order] = np.vstack(parts)
        chunk_ids = [c.id for c in chunks]

        async def persist(conn: Connection) -> None:
            write = (
                repository.add_embeddings if event.changed_only else repository.replace_embeddings
            )
            await write(conn, job.id, job.owner_id, embedder.name, chunk_ids, vectors)

        kept = total - len(chunks)
        if event.changed_only:
            message = f"{len(chunks)} new chunks embedded with {embedder.name}, {kept} kept theirs"
        elif chunks:
            message = f"{len(chunks)} chunks embedded with {embedder.name}"
        else:
            message = "no chunks to embed (no speech)"

        return StageOutcome(
            persist=persist,
            next_event=EmbeddingsReady(
                job_id=job.id,
                owner_id=job.owner_id,
                chunk_count=total,
                model=embedder.name,
                dimensions=embedder.dimensions,
            ),
            message=message,
            metrics={
                "chunks": total,
                "embedded": len(chunks),
                "kept": kept,
                "changed_only": event.changed_only,
                "model": embedder.name,
                "device": embedder.device,
            },
        )

    return work
