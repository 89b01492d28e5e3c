"""Postgres access of voice profiles: voice_profiles, voice_samples, voice_rejections and the
link of a job's speaker to the profile confirmed for it (job_speakers.profile_id).

Every read of a profile is scoped by its owner: a profile id of another user's is never
found, listed, suggested or linked. A profile's centroid is the mean of its samples; cosine
similarity ignores length, so the mean need not be normalised (`1 - (centroid <=> voice)`).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from mxw_shared.db import Connection, Pool

_PROFILE = (
    "SELECT p.id, p.name, p.created_at, p.updated_at,"
    " (SELECT count(*) FROM voice_samples s WHERE s.profile_id = p.id) AS samples"
    " FROM voice_profiles p"
)


async def fetch_profile(
    conn: Connection | Pool, owner_id: str, profile_id: uuid.UUID
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"{_PROFILE} WHERE p.id = $1 AND p.owner_id = $2", profile_id, owner_id
    )
    return row


async def list_profiles(
    pool: Pool, owner_id: str, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[asyncpg.Record]:
    """The owner's profiles, newest first, `limit` of them after the cursor `after`."""
    if after is None:
        rows: list[asyncpg.Record] = await pool.fetch(
            f"{_PROFILE} WHERE p.owner_id = $1 ORDER BY p.created_at DESC, p.id DESC LIMIT $2",
            owner_id,
            limit,
        )
        return rows
    rows = await pool.fetch(
        f"{_PROFILE} WHERE p.owner_id = $1 AND (p.created_at, p.id) < ($3, $4)"
        " ORDER BY p.created_at DESC, p.id DESC LIMIT $2",
        owner_id,
        limit,
        after[0],
        after[1],
    )
    return rows


async def insert_profile(conn: Connection, owner_id: str, name: str) -> uuid.UUID | None:
    """A new profile's id; None when the owner already has a profile of that name."""
    profile_id = uuid.uuid4()
    inserted: uuid.UUID | None = await conn.fetchval(
        "INSERT INTO voice_profiles (id, owner_id, name) VALUES ($1, $2, $3)"
        " ON CONFLICT (owner_id, lower(name)) DO NOTHING RETURNING id",
        profile_id,
        owner_id,
        name,
    )
    return inserted


async def rename_profile(
    conn: Connection, owner_id: str, profile_id: uuid.UUID, name: str
) -> bool | None:
    """True when renamed, None when there is no such profile of the owner's, False when the
    name is another of their profiles'. The job speakers linked to it take the new name."""
    clash = await conn.fetchval(
        "SELECT 1 FROM voice_profiles WHERE owner_id = $1 AND lower(name) = lower($2) AND id <> $3",
        owner_id,
        name,
        profile_id,
    )
    if clash:
        return False
    done = await conn.fetchval(
        "UPDATE voice_profiles SET name = $3, updated_at = now()"
        " WHERE id = $1 AND owner_id = $2 RETURNING id",
        profile_id,
        owner_id,
        name,
    )
    if done is None:
        return None
    await conn.execute("UPDATE job_speakers SET name = $2 WHERE profile_id = $1", profile_id, name)
    return True


async def delete_profile(conn: Connection | Pool, owner_id: str, profile_id: uuid.UUID) -> bool:
    """Delete the profile; its samples and rejections go with it (ON DELETE CASCADE) and
    the job speakers linked to it are unlinked (ON DELETE SET NULL), keeping their names."""
    deleted = await conn.fetchval(
        "DELETE FROM voice_profiles WHERE id = $1 AND owner_id = $2 RETURNING id",
        profile_id,
        owner_id,
    )
    return deleted is not None


async def fetch_speaker(
    conn: Connection | Pool, job_id: uuid.UUID, label: str
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT label, name, talk_s, profile_id, embedding IS NOT NULL AS has_voice"
        " FROM job_speakers WHERE job_id = $1 AND label = $2",
        job_id,
        label,
    )
    return row


async def link_speaker(
    conn: Connection, profile_id: uuid.UUID, job_id: uuid.UUID, label: str
) -> None:
    """The speaker is the profile's voice: its name, its link, and its embedding one of the
    profile's samples (the only one this speaker gives: a sample it gave another profile is
    withdrawn, so that a speaker belongs to one profile)."""
    await conn.execute(
        "DELETE FROM voice_samples WHERE job_id = $1 AND label = $2 AND profile_id <> $3",
        job_id,
        label,
        profile_id,
    )
    await conn.execute(
        "INSERT INTO voice_samples (profile_id, job_id, label, embedding)"
        " SELECT $3, job_id, label, embedding FROM job_speakers"
        " WHERE job_id = $1 AND label = $2 AND embedding IS NOT NULL"
        " ON CONFLICT (profile_id, job_id, label) DO UPDATE SET embedding = excluded.embedding,"
        " created_at = now()",
        job_id,
        label,
        profile_id,
    )
    await conn.execute(
        "UPDATE job_speakers s SET profile_id = p.id, name = p.name FROM voice_profiles p"
        " WHERE s.job_id = $1 AND s.label = $2 AND p.id = $3",
        job_id,
        label,
        profile_id,
    )
    await conn.execute(
        "DELETE FROM voice_rejections WHERE job_id = $1 AND label = $2 AND profile_id = $3",
        job_id,
        label,
        profile_id,
    )
    await touch(conn, profile_id)


async def reject(conn: Connection, profile_id: uuid.UUID, job_id: uuid.UUID, label: str) -> None:
    """The speaker is not the profile's voice: never suggested again for it; if it was
    linked to the profile, it is unlinked, its sample withdrawn and its name (the
    profile's) cleared."""
    await conn.execute(
        "INSERT INTO voice_rejections (job_id, label, profile_id) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING",
        job_id,
        label,
        profile_id,
    )
    unlinked = await conn.fetchval(
        "UPDATE job_speakers SET profile_id = NULL, name = NULL"
        " WHERE job_id = $1 AND label = $2 AND profile_id = $3 RETURNING label",
        job_id,
        label,
        profile_id,
    )
    removed = await conn.fetchval(
        "WITH gone AS (DELETE FROM voice_samples WHERE profile_id = $3 AND job_id = $1"
        " AND label = $2 RETURNING 1) SELECT count(*) FROM gone",
        job_id,
        label,
        profile_id,
    )
    if unlinked is not None or removed:
        await touch(conn, profile_id)


async def touch(conn: Connection, profile_id: uuid.UUID) -> None:
    await conn.execute("UPDATE voice_profiles SET updated_at = now() WHERE id = $1", profile_id)


async def suggestions(
    conn: Connection | Pool, job_id: uuid.UUID, owner_id: str, threshold: float
) -> dict[str, asyncpg.Record]:
    """For each of the job's speakers with a voice and no confirmed profile, the owner's
    profile whose centroid is closest to it (its id, name and cosine similarity), if that
    similarity is at least `threshold` and the user did not reject it for that speaker."""
    rows = await conn.fetch(
        """
        WITH centroids AS MATERIALIZED (
            SELECT p.id, p.name, avg(v.embedding) AS centroid
            FROM voice_profiles p JOIN voice_samples v ON v.profile_id = p.id
            WHERE p.owner_id = $2
            GROUP BY p.id, p.name
        )
        SELECT s.label, best.id AS profile_id, best.name, best.similarity
        FROM job_speakers s
        CROSS JOIN LATERAL (
            SELECT c.id, c.name, 1 - (c.centroid <=> s.embedding) AS similarity
            FROM centroids c
            WHERE NOT EXISTS (
                SELECT 1 FROM voice_rejections r
                WHERE r.job_id = s.job_id AND r.label = s.label AND r.profile_id = c.id)
            ORDER BY c.centroid <=> s.embedding, c.id
            LIMIT 1
        ) best
        WHERE s.job_id = $1 AND s.profile_id IS NULL AND s.embedding IS NOT NULL
          AND best.similarity >= $3
        """,
        job_id,
        owner_id,
        threshold,
    )
    return {r["label"]: r for r in rows}
