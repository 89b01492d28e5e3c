"""Postgres access of the chunker: reads segments (transcriber's, and the gateway's after an
edit) and revisions (gateway's), writes chunks (its own)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from mxw_shared.db import Connection, Pool
from mxw_shared.speakers import Turn, Turns, attribute_all

from mxw_chunker.domain import Chunk, Segment
from mxw_chunker.recut import RecutChange, Span, StoredChunk


@dataclass(frozen=True)
class Transcript:
    segments: list[Segment]
    revision: int  # transcripts.revision when the segments were read (0: as transcribed)


@dataclass(frozen=True)
class RecutState:
    """What a re-cut after an edit reads, in one snapshot."""

    transcript: Transcript
    chunks: list[StoredChunk]  # the job's chunks, in idx order
    method: str | None  # the method of the job's chunks (None: no chunks)
    spans: list[Span]  # the audio touched by the revisions newer than the chunks'


async def load_segments(pool: Pool, job_id: uuid.UUID) -> Transcript:
    """The transcript as the chunker reads it: one segment per line of one speaker (the
    diarizer's turns joined with the words, mxw_shared.speakers), or the transcriber's
    segments as they are when the job has no speakers; with the revision they are at (one
    snapshot: an edit commits segments and revision together)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        return await _transcript(conn, job_id)


async def _transcript(conn: Connection, job_id: uuid.UUID) -> Transcript:
    rows = await conn.fetch(
        "SELECT idx, start_s, end_s, text, words FROM segments WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    turns = await load_turns(conn, job_id)
    revision = await conn.fetchval("SELECT revision FROM transcripts WHERE job_id = $1", job_id)
    lines = attribute_all(rows, turns)
    segments = [Segment(i, ln.start_s, ln.end_s, ln.text, ln.speaker) for i, ln in enumerate(lines)]
    return Transcript(segments, int(revision or 0))


async def load_recut(pool: Pool, job_id: uuid.UUID) -> RecutState:
    """The current transcript, the job's chunks and the spans of every revision after the
    one the chunks were cut from (max(chunks.revision): a cut leaves the whole set
    consistent with the revision it cut at)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        transcript = await _transcript(conn, job_id)
        rows = await conn.fetch(
            "SELECT id, idx, start_s, end_s, text, revision, method FROM chunks"
            " WHERE job_id = $1 ORDER BY idx",
            job_id,
        )
        chunks = [
            StoredChunk(r["id"], r["idx"], r["start_s"], r["end_s"], r["text"], r["revision"])
            for r in rows
        ]
        cut_at = max((c.revision for c in chunks), default=0)
        spans = await conn.fetch(
            "SELECT start_s, end_s FROM transcript_revisions"
            " WHERE job_id = $1 AND revision > $2 ORDER BY revision",
            job_id,
            cut_at,
        )
    return RecutState(
        transcript,
        chunks,
        rows[0]["method"] if rows else None,
        [(s["start_s"], s["end_s"]) for s in spans],
    )


async def load_turns(conn: Connection, job_id: uuid.UUID) -> Turns:
    rows = await conn.fetch(
        "SELECT start_s, end_s, speaker FROM speaker_turns WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    return Turns(Turn(r["start_s"], r["end_s"], r["speaker"]) for r in rows)


_INSERT = (
    "INSERT INTO chunks (job_id, owner_id, idx, text, topic, title, summary, keywords,"
    " confidence, start_s, end_s, method, speakers, revision)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)


def _rows(
    job_id: uuid.UUID, owner_id: str, chunks: Sequence[Chunk], methods: Sequence[str], revision: int
) -> list[tuple[object, ...]]:
    return [
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
            revision,
        )
        for c, method in zip(chunks, methods, strict=True)
    ]


async def replace_chunks(
    conn: Connection,
    job_id: uuid.UUID,
    owner_id: str,
    chunks: list[Chunk],
    method: str,
    revision: int = 0,
) -> None:
    """Idempotent: a redelivered or reprocessed event rewrites the job's chunks, never adds
    a second set. `topic` (weighted highest in full-text search) holds the title;
    `revision`: the transcript revision the chunks were cut from."""
    await conn.execute("DELETE FROM chunks WHERE job_id = $1", job_id)
    await conn.executemany(
        _INSERT, _rows(job_id, owner_id, chunks, [method] * len(chunks), revision)
    )


async def apply_recut(
    conn: Connection,
    job_id: uuid.UUID,
    owner_id: str,
    change: RecutChange,
    methods: Sequence[str],
    revision: int,
) -> None:
    """A re-cut after an edit, in the caller's transaction: the affected chunks go (their
    vectors with them: ON DELETE CASCADE), the kept ones keep their rows and their revision
    (the one they were cut from) and move to their new idx, the new ones come in at
    `revision`. UNIQUE (job_id, idx) is checked row by row, so the kept chunks that move
    park at negative idx first."""
    await conn.execute(
        "DELETE FROM chunks WHERE job_id = $1 AND id = ANY($2::bigint[])",
        job_id,
        list(change.delete_ids),
    )
    if change.renumber:
        await conn.execute(
            "UPDATE chunks c SET idx = -1 - m.idx FROM unnest($2::bigint[], $3::int[]) AS"
            " m(id, idx) WHERE c.job_id = $1 AND c.id = m.id",
            job_id,
            [i for i, _ in change.renumber],
            [n for _, n in change.renumber],
        )
    await conn.executemany(_INSERT, _rows(job_id, owner_id, change.insert, methods, revision))
    await conn.execute("UPDATE chunks SET idx = -1 - idx WHERE job_id = $1 AND idx < 0", job_id)
    if not change.insert:
        # Nothing new carries `revision` (an edit that only removed words): the kept chunks
        # do, so the set's revision (its newest chunk's) moves past the spans just handled.
        await conn.execute(
            "UPDATE chunks SET revision = $2 WHERE job_id = $1 AND revision < $2", job_id, revision
        )
