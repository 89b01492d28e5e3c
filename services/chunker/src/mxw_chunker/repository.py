"""Postgres access of the chunker: reads segments (transcriber's), writes chunks (its own)."""

from __future__ import annotations

import uuid

from mxw_shared.db import Connection, Pool
from mxw_shared.speakers import Turn, Turns, attribute_all

from mxw_chunker.domain import Chunk, Segment


async def load_segments(pool: Pool, job_id: uuid.UUID) -> list[Segment]:
    """The transcript as the chunker reads it: one segment per line of one speaker (the
    diarizer's turns joined with the words, mxw_shared.speakers), or the transcriber's
    segments as they are when the job has no speakers."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT idx, start_s, end_s, text, words FROM segments WHERE job_id = $1 ORDER BY idx",
            job_id,
        )
        turns = await load_turns(conn, job_id)
    lines = attribute_all(rows, turns)
    return [Segment(i, ln.start_s, ln.end_s, ln.text, ln.speaker) for i, ln in enumerate(lines)]


async def load_turns(conn: Connection, job_id: uuid.UUID) -> Turns:
    rows = await conn.fetch(
        "SELECT start_s, end_s, speaker FROM speaker_turns WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    return Turns(Turn(r["start_s"], r["end_s"], r["speaker"]) for r in rows)


async def replace_chunks(
    conn: Connection, job_id: uuid.UUID, owner_id: str, chunks: list[Chunk], method: str
) -> None:
    """Idempotent: a redelivered or reprocessed event rewrites the job's chunks, never adds
    a second set. `topic` (weighted highest in full-text search) holds the title."""
    await conn.execute("DELETE FROM chunks WHERE job_id = $1", job_id)
    await conn.executemany(
        "INSERT INTO chunks (job_id, owner_id, idx, text, topic, title, summary, keywords,"
        " confidence, start_s, end_s, method, speakers)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        [
            (
                job_id,
                owner_id,
                c.idx,
                c.text,
                c.title,
                c.title,
                c.summary,
                list(c.keywords),
                c.confidence,
                c.start_s,
                c.end_s,
                method,
                list(c.speakers),
            )
            for c in chunks
        ],
    )
