"""Postgres access of custom vocabularies: one row per user in `vocabularies`, read and
written by its owner only (every query is by owner_id)."""

from __future__ import annotations

from datetime import datetime

from mxw_shared.db import Connection, Pool


async def fetch_terms(
    conn: Connection | Pool, owner_id: str, *, for_update: bool = False
) -> tuple[tuple[str, ...], datetime | None]:
    """The owner's terms in their order and when they last changed (none, None: never set).
    `for_update` locks the row for a read-modify-write (the row is created first, so that
    two concurrent first edits also serialise)."""
    if for_update:
        await conn.execute(
            "INSERT INTO vocabularies (owner_id) VALUES ($1) ON CONFLICT DO NOTHING", owner_id
        )
    row = await conn.fetchrow(
        "SELECT terms, updated_at FROM vocabularies WHERE owner_id = $1"
        + (" FOR UPDATE" if for_update else ""),
        owner_id,
    )
    if row is None:
        return (), None
    return tuple(row["terms"]), row["updated_at"]


async def store_terms(conn: Connection | Pool, owner_id: str, terms: tuple[str, ...]) -> datetime:
    """Replace the owner's terms; when they changed."""
    updated: datetime = await conn.fetchval(
        "INSERT INTO vocabularies (owner_id, terms) VALUES ($1, $2)"
        " ON CONFLICT (owner_id) DO UPDATE SET terms = excluded.terms, updated_at = now()"
        " RETURNING updated_at",
        owner_id,
        list(terms),
    )
    return updated
