"""Postgres access of the embedder: reads chunks (the chunker's), writes chunk_embeddings
(its own). Vectors go in as numpy arrays: the pool's connections carry pgvector's codec."""

from __future__ import annotations

import uuid

from mxw_shared.db import Connection, Pool

from mxw_embedder.domain import ChunkText
from mxw_embedder.models import Vectors


async def load_chunks(pool: Pool, job_id: uuid.UUID) -> list[ChunkText]:
    rows = await pool.fetch(
        "SELECT id, idx, text, topic FROM chunks WHERE job_id = $1 ORDER BY idx", job_id
    )
    return [ChunkText(r["id"], r["idx"], r["text"], r["topic"]) for r in rows]


async def replace_embeddings(
    conn: Connection,
    job_id: uuid.UUID,
    owner_id: str,
    model: str,
    chunk_ids: list[int],
    vectors: Vectors,
) -> None:
    """Idempotent, in the caller's transaction: a redelivered event rewrites the job's
    vectors, never adds a second set, and vectors of chunks that no longer exist go."""
    if len(chunk_ids) != len(vectors):
        raise ValueError(f"{len(chunk_ids)} chunks but {len(vectors)} vectors")
    await conn.execute("DELETE FROM chunk_embeddings WHERE job_id = $1", job_id)
    await conn.executemany(
        "INSERT INTO chunk_embeddings (chunk_id, job_id, owner_id, model, embedding) "
        "VALUES ($1, $2, $3, $4, $5)",
        [
            (chunk_id, job_id, owner_id, model, vector)
            for chunk_id, vector in zip(chunk_ids, vectors, strict=True)
        ],
    )


async def embedding_column_type(pool: Pool) -> str:
    """The declared type of chunk_embeddings.embedding, e.g. `vector(384)`."""
    value = await pool.fetchval(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'chunk_embeddings'::regclass AND attname = 'embedding' "
        "AND NOT attisdropped"
    )
    if value is None:
        raise RuntimeError("chunk_embeddings.embedding does not exist: is the schema migrated?")
    return str(value)
