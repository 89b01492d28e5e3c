"""Hybrid search SQL: pgvector nearest neighbours and Postgres full-text, fused by
reciprocal rank, always scoped to an owner unless an admin asked for everything."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from mxw_shared.db import Pool


async def hybrid_search(
    pool: Pool,
    *,
    query_text: str,
    query_vector: list[float],
    owner_id: str | None,
    job_id: uuid.UUID | None,
    candidates: int,
    limit: int,
    rrf_k: int,
    ef_search: int,
) -> list[asyncpg.Record]:
    args: list[Any] = [query_vector, query_text, candidates, limit, rrf_k]
    vec_filters: list[str] = []
    txt_filters: list[str] = []
    if owner_id is not None:
        args.append(owner_id)
        vec_filters.append(f"e.owner_id = ${len(args)}")
        txt_filters.append(f"c.owner_id = ${len(args)}")
    if job_id is not None:
        args.append(job_id)
        vec_filters.append(f"e.job_id = ${len(args)}")
        txt_filters.append(f"c.job_id = ${len(args)}")
    vec_where = f"WHERE {' AND '.join(vec_filters)}" if vec_filters else ""
    txt_and = "".join(f" AND {f}" for f in txt_filters)
    # The final join re-checks the scope on chunks itself, whatever the embeddings claim.
    final_where = f"WHERE {' AND '.join(txt_filters)}" if txt_filters else ""
    sql = f"""
        WITH nearest AS MATERIALIZED (
            SELECT e.chunk_id, e.embedding <=> $1 AS distance
            FROM chunk_embeddings e
            {vec_where}
            ORDER BY e.embedding <=> $1
            LIMIT $3
        ),
        vec AS (
            SELECT chunk_id, row_number() OVER (ORDER BY distance, chunk_id) AS rank
            FROM nearest
        ),
        words AS (
            SELECT c.id AS chunk_id,
                   row_number() OVER (ORDER BY ts_rank_cd(c.tsv, q) DESC, c.id) AS rank
            FROM chunks c, websearch_to_tsquery('english', $2) AS q
            WHERE c.tsv @@ q{txt_and}
            ORDER BY ts_rank_cd(c.tsv, q) DESC, c.id
            LIMIT $3
        ),
        fused AS (
            SELECT coalesce(v.chunk_id, w.chunk_id) AS chunk_id,
                   coalesce(1.0 / ($5 + v.rank), 0) + coalesce(1.0 / ($5 + w.rank), 0) AS score,
                   v.rank AS vector_rank, w.rank AS text_rank
            FROM vec v FULL OUTER JOIN words w ON v.chunk_id = w.chunk_id
        )
        SELECT c.id AS chunk_id, c.job_id, c.idx, c.text, c.topic, c.keywords, c.start_s,
               c.end_s, j.filename, f.score, f.vector_rank, f.text_rank
        FROM fused f
        JOIN chunks c ON c.id = f.chunk_id
        JOIN jobs j ON j.id = c.job_id
        {final_where}
        ORDER BY f.score DESC, f.text_rank IS NOT NULL DESC, f.vector_rank, c.id
        LIMIT $4
    """
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        # Filtered HNSW scans stop at ef_search candidates and could return fewer rows than
        # asked for; iterative scans keep walking the graph until the filter is satisfied.
        await conn.execute("SET LOCAL hnsw.iterative_scan = 'relaxed_order'")
        await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
