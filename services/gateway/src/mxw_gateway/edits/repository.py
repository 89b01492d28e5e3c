"""Postgres access of transcript editing: the job's segments and transcript row (written
here under the job's lock, as the transcriber writes them), and the revisions (its own)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from mxw_shared.db import Connection, Pool

from mxw_gateway.edits.domain import Change, Segment, change_from_json, words_from_json


@dataclass(frozen=True)
class TranscriptRow:
    duration_s: float
    revision: int
    created_us: int  # when the machine transcript was written, microseconds since 1970


async def lock_transcript(conn: Connection, job_id: uuid.UUID) -> TranscriptRow | None:
    row = await conn.fetchrow(
        "SELECT duration_s, revision,"
        " (extract(epoch FROM created_at) * 1000000)::bigint AS created_us"
        " FROM transcripts WHERE job_id = $1 FOR UPDATE",
        job_id,
    )
    if row is None:
        return None
    return TranscriptRow(row["duration_s"], row["revision"], row["created_us"])


async def load_segments(conn: Connection, job_id: uuid.UUID) -> list[Segment]:
    rows = await conn.fetch(
        "SELECT start_s, end_s, text, words, avg_logprob, no_speech_prob FROM segments"
        " WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    return [
        Segment(
            r["start_s"],
            r["end_s"],
            r["text"],
            words_from_json(r["words"]),
            r["avg_logprob"],
            r["no_speech_prob"],
        )
        for r in rows
    ]


async def write_segments_from(
    conn: Connection, job_id: uuid.UUID, first: int, tail: Sequence[Segment]
) -> None:
    """Segments `first`… of the job are `tail` (renumbered from `first`)."""
    await conn.execute("DELETE FROM segments WHERE job_id = $1 AND idx >= $2", job_id, first)
    await conn.executemany(
        "INSERT INTO segments (job_id, idx, start_s, end_s, text, avg_logprob, no_speech_prob,"
        " words) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (
                job_id,
                first + k,
                s.start_s,
                s.end_s,
                s.text,
                s.avg_logprob,
                s.no_speech_prob,
                None if s.words is None else [w.as_json() for w in s.words],
            )
            for k, s in enumerate(tail)
        ],
    )


async def set_revision(conn: Connection, job_id: uuid.UUID, revision: int, text: str) -> None:
    await conn.execute(
        "UPDATE transcripts SET revision = $2, text = $3 WHERE job_id = $1", job_id, revision, text
    )


async def insert_revision(
    conn: Connection,
    job_id: uuid.UUID,
    revision: int,
    *,
    author: str,
    operation: str,
    summary: str,
    change: Change,
) -> None:
    start_s, end_s = change.span
    await conn.execute(
        "INSERT INTO transcript_revisions (job_id, revision, author, operation, summary,"
        " start_s, end_s, change) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        job_id,
        revision,
        author,
        operation,
        summary,
        start_s,
        end_s,
        change.as_json(),
    )


async def fetch_revisions(pool: Pool, job_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT revision, author, created_at, operation, summary, start_s, end_s"
        " FROM transcript_revisions WHERE job_id = $1 ORDER BY revision DESC",
        job_id,
    )
    return rows


async def changes_after(conn: Connection | Pool, job_id: uuid.UUID, revision: int) -> list[Change]:
    """The changes of the revisions after `revision`, newest first (the order to undo)."""
    rows = await conn.fetch(
        "SELECT change FROM transcript_revisions WHERE job_id = $1 AND revision > $2"
        " ORDER BY revision DESC",
        job_id,
        revision,
    )
    return [change_from_json(r["change"]) for r in rows]


async def current_revision(conn: Connection, job_id: uuid.UUID) -> int:
    """The transcript's revision (0: as transcribed, or no transcript)."""
    value = await conn.fetchval("SELECT revision FROM transcripts WHERE job_id = $1", job_id)
    return int(value or 0)


async def discard_revisions(conn: Connection, job_id: uuid.UUID) -> None:
    """Forget the job's corrections and their history (a new transcription replaces the
    transcript they corrected)."""
    await conn.execute("DELETE FROM transcript_revisions WHERE job_id = $1", job_id)
    await conn.execute("UPDATE transcripts SET revision = 0 WHERE job_id = $1", job_id)
