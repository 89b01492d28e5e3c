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


async def load_unembedded(pool: Pool, job_id: uuid.UUID, model: str) -> tuple[list[ChunkText], int]:
    """After an edit (chunks.ready changed_only): the job's chunks without a vector of
    `model` (the re-cut's new rows: a deleted chunk took its vector along), and how many
    chunks the job has in all."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        rows = await conn.fetch(
            "SELECT c.id, c.idx, c.text, c.topic FROM chunks c"
            " LEFT JOIN chunk_embeddings e ON e.chunk_id = c.id AND e.model = $2"
            " WHERE c.job_id = $1 AND e.chunk_id IS NULL ORDER BY c.idx",
            job_id,
            model,
        )
        total: int = await conn.fetchval("SELECT count(*) FROM chunks WHERE job_id = $1", job_id)
    return [ChunkText(r["id"], r["idx"], r["text"], r["topic"]) for r in rows], total


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


async def add_embeddings(
    conn: Connection,
    job_id: uuid.UUID,
    owner_id: str,
    model: str,
    chunk_ids: list[int],
    vectors: Vectors,
) -> None:
    """The vectors of some of the job's chunks, the others' kept (after an edit); a
    redelivery rewrites the same rows. A chunk deleted meanwhile is skipped (no row to
    refer to)."""
    if len(chunk_ids) != len(vectors):
        raise ValueError(f"{len(chunk_ids)} chunks but {len(vectors)} vectors")
    await conn.executemany(
        "INSERT INTO chunk_embeddings (chunk_id, job_id, owner_id, model, embedding) "
        "SELECT $1::bigint, $2::uuid, $3::text, $4::text, $5::vector"
        " WHERE EXISTS (SELECT 1 FROM chunks WHERE id = $1::bigint)"
        " ON CONFLICT (chunk_id) DO UPDATE"
        " SET model = excluded.model, embedding = excluded.embedding",
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
