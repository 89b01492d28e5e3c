"""Postgres access of the jobs module. The gateway writes users, blobs and jobs; it reads the
rows other services own (job_stages, transcripts, segments) and corrects the speakers the
diarizer found (names, merges, moved segments: job_speakers, speaker_turns, chunks.speakers)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
from mxw_shared.blobs import StoredBlob
from mxw_shared.contracts import JobOptions
from mxw_shared.db import Connection, Pool
from mxw_shared.jobs import job_state_sql
from mxw_shared.locks import BLOB_CONTENT, UPLOAD_CONTENT, text_key
from mxw_shared.speakers import Turn

_JOB_COLUMNS = (
    "id, owner_id, filename, audio_uri, sha256, size_bytes, content_type, options, source, "
    "cancelled_at, created_at"
)


async def lock_owner_content(conn: Connection, owner_id: str, sha256: str) -> None:
    """Serialise concurrent uploads of the same audio by the same owner (de-duplication)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        text_key(UPLOAD_CONTENT, owner_id, sha256),
    )


async def lock_blob(conn: Connection, sha256: str) -> None:
    """Serialise an upload's commit with the deletion of the stored file of the same bytes
    (any owner's), until the transaction ends."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", text_key(BLOB_CONTENT, sha256)
    )


async def find_reusable_job(conn: Connection, owner_id: str, sha256: str) -> uuid.UUID | None:
    """The owner's newest job on this audio that is neither cancelled nor failed (in its
    current run: a job reprocessed after a failure is reusable again)."""
    job_id: uuid.UUID | None = await conn.fetchval(
        f"""SELECT j.id FROM jobs j
            WHERE j.owner_id = $1 AND j.sha256 = $2
              AND ({job_state_sql("j")}) NOT IN ('cancelled', 'failed')
            ORDER BY j.created_at DESC LIMIT 1""",
        owner_id,
        sha256,
    )
    return job_id


async def stored_bytes_locked(conn: Connection, owner_id: str, excluding_sha256: str) -> int:
    """The owner's stored audio (distinct files), excluding one content; serialises the
    owner's quota checks until the transaction ends, so concurrent uploads cannot both pass."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"storage-quota:{owner_id}"
    )
    used: int = await conn.fetchval(
        "SELECT coalesce(sum(size_bytes), 0)::bigint FROM"
        " (SELECT DISTINCT ON (sha256) size_bytes FROM blobs"
        "  WHERE owner_id = $1 AND sha256 <> $2 ORDER BY sha256) AS files",
        owner_id,
        excluding_sha256,
    )
    return used


async def ensure_blob(
    conn: Connection, owner_id: str, blob: StoredBlob, content_type: str
) -> uuid.UUID:
    existing: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM blobs WHERE owner_id = $1 AND sha256 = $2 AND uri = $3 LIMIT 1",
        owner_id,
        blob.sha256,
        blob.uri,
    )
    if existing is not None:
        return existing
    blob_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO blobs (id, owner_id, sha256, size_bytes, content_type, uri) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        blob_id,
        owner_id,
        blob.sha256,
        blob.size_bytes,
        content_type,
        blob.uri,
    )
    return blob_id


async def insert_job(
    conn: Connection,
    *,
    job_id: uuid.UUID,
    owner_id: str,
    filename: str | None,
    blob: StoredBlob,
    content_type: str,
    options: JobOptions,
) -> None:
    await conn.execute(
        "INSERT INTO jobs (id, owner_id, filename, audio_uri, sha256, size_bytes, content_type,"
        " options, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'gateway')",
        job_id,
        owner_id,
        filename,
        blob.uri,
        blob.sha256,
        blob.size_bytes,
        content_type,
        options.model_dump(mode="json"),
    )


async def blob_in_use(conn: Connection, uri: str) -> bool:
    used: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM blobs WHERE uri = $1)"
        " OR EXISTS (SELECT 1 FROM jobs WHERE audio_uri = $1)",
        uri,
    )
    return used


async def unreferenced_blobs(pool: Pool, uris: list[str]) -> list[str]:
    rows = await pool.fetch(
        "SELECT u.uri FROM unnest($1::text[]) AS u(uri)"
        " WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.uri = u.uri)"
        " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.audio_uri = u.uri)",
        uris,
    )
    return [r["uri"] for r in rows]


async def fetch_job(conn: Connection | Pool, job_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)


async def fetch_stages(
    conn: Connection | Pool, job_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[asyncpg.Record]]:
    rows = await conn.fetch(
        "SELECT job_id, stage, state, progress, attempts, error, queued_at, started_at,"
        " finished_at, metrics FROM job_stages WHERE job_id = ANY($1::uuid[])",
        job_ids,
    )
    out: dict[uuid.UUID, list[asyncpg.Record]] = {j: [] for j in job_ids}
    for row in rows:
        out[row["job_id"]].append(row)
    return out


# The job's overall state in SQL (mxw_shared.jobs.derive_job_state), so lists can filter on it.
JOB_STATE_SQL = job_state_sql("jobs")


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_jobs(
    pool: Pool,
    *,
    owner_id: str | None,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    offset: int,
    states: list[str] | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    filename: str | None = None,
) -> list[asyncpg.Record]:
    """Newest first; `owner_id=None` lists everyone's (admins). Keyset after `after`.
    Filters: derived states, creation time range [from, to), filename substring."""
    conditions: list[str] = []
    args: list[Any] = []
    if owner_id is not None:
        args.append(owner_id)
        conditions.append(f"owner_id = ${len(args)}")
    if states:
        args.append(states)
        conditions.append(f"({JOB_STATE_SQL}) = ANY(${len(args)}::text[])")
    if created_from is not None:
        args.append(created_from)
        conditions.append(f"created_at >= ${len(args)}")
    if created_to is not None:
        args.append(created_to)
        conditions.append(f"created_at < ${len(args)}")
    if filename:
        args.append(_like_pattern(filename))
        conditions.append(f"filename ILIKE ${len(args)}")
    if after is not None:
        args.extend(after)
        conditions.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    args.extend([limit, offset])
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY created_at DESC, id DESC"
        f" LIMIT ${len(args) - 1} OFFSET ${len(args)}",
        *args,
    )
    return rows


async def fetch_transcript(
    pool: Pool, job_id: uuid.UUID
) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
    transcript = await pool.fetchrow(
        "SELECT language, language_probability, duration_s, model, text, complete, revision,"
        " (extract(epoch FROM created_at) * 1000000)::bigint AS created_us"
        " FROM transcripts WHERE job_id = $1",
        job_id,
    )
    if transcript is None:
        return None
    segments = await pool.fetch(
        "SELECT idx, start_s, end_s, text, words FROM segments WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    return transcript, segments


async def fetch_chunks(pool: Pool, job_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT idx, start_s, end_s, text, title, summary, topic, keywords, confidence, method,"
        " speakers FROM chunks WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    return rows


async def fetch_turns(conn: Connection | Pool, job_id: uuid.UUID) -> list[Turn]:
    rows = await conn.fetch(
        "SELECT start_s, end_s, speaker FROM speaker_turns WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    return [Turn(r["start_s"], r["end_s"], r["speaker"]) for r in rows]


async def fetch_speakers(conn: Connection | Pool, job_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT label, name, talk_s, profile_id FROM job_speakers WHERE job_id = $1 ORDER BY label",
        job_id,
    )
    return rows


async def fetch_segments(conn: Connection, job_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT idx, start_s, end_s, text, words FROM segments WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    return rows


async def lock_job(conn: Connection, job_id: uuid.UUID) -> None:
    """Lock the job row until the transaction ends (as the shared transitions do): one
    correction of its speakers at a time, and none under a starting rerun."""
    await conn.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job_id)


async def rename_speaker(
    conn: Connection | Pool, job_id: uuid.UUID, label: str, name: str
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE job_speakers SET name = $3 WHERE job_id = $1 AND label = $2"
        " RETURNING label, name, talk_s",
        job_id,
        label,
        name,
    )
    return row


async def merge_speakers(conn: Connection, job_id: uuid.UUID, source: str, into: str) -> None:
    """`source`'s turns relabelled `into`, its talk time added to `into`'s (and its name
    kept when `into` has none), its row removed."""
    await conn.execute(
        "UPDATE speaker_turns SET speaker = $3 WHERE job_id = $1 AND speaker = $2",
        job_id,
        source,
        into,
    )
    await conn.execute(
        "UPDATE job_speakers i SET talk_s = i.talk_s + f.talk_s, name = coalesce(i.name, f.name),"
        " profile_id = coalesce(i.profile_id, f.profile_id)"
        " FROM job_speakers f WHERE i.job_id = $1 AND i.label = $3"
        " AND f.job_id = $1 AND f.label = $2",
        job_id,
        source,
        into,
    )
    await conn.execute("DELETE FROM job_speakers WHERE job_id = $1 AND label = $2", job_id, source)


async def replace_turns(conn: Connection, job_id: uuid.UUID, turns: list[Turn]) -> None:
    """The job's turns are `turns` (renumbered), each speaker's talk time their sum; a new
    label gets its row."""
    await conn.execute("DELETE FROM speaker_turns WHERE job_id = $1", job_id)
    await conn.execute(
        "INSERT INTO speaker_turns (job_id, idx, start_s, end_s, speaker)"
        " SELECT $1::uuid, t.idx - 1, t.start_s, t.end_s, t.speaker"
        " FROM unnest($2::float8[], $3::float8[], $4::text[])"
        " WITH ORDINALITY AS t(start_s, end_s, speaker, idx)",
        job_id,
        [t.start_s for t in turns],
        [t.end_s for t in turns],
        [t.speaker for t in turns],
    )
    await conn.execute(
        "INSERT INTO job_speakers (job_id, label)"
        " SELECT DISTINCT job_id, speaker FROM speaker_turns WHERE job_id = $1"
        " ON CONFLICT (job_id, label) DO NOTHING",
        job_id,
    )
    await conn.execute(
        "UPDATE job_speakers s SET talk_s = coalesce((SELECT sum(t.end_s - t.start_s)"
        " FROM speaker_turns t WHERE t.job_id = s.job_id AND t.speaker = s.label), 0)"
        " WHERE s.job_id = $1",
        job_id,
    )


async def fetch_chunk_spans(conn: Connection, job_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, start_s, end_s FROM chunks WHERE job_id = $1 ORDER BY idx", job_id
    )
    return rows


async def set_chunk_speakers(conn: Connection, speakers: list[tuple[int, list[str]]]) -> None:
    await conn.executemany("UPDATE chunks SET speakers = $2 WHERE id = $1", speakers)
