"""The notifier's reads of jobs and their status history. (Its webhook tables are in
webhooks.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from mxw_shared.db import Pool

from mxw_notifier.domain import StatusMessage


async def job_owner(pool: Pool, job_id: uuid.UUID) -> str | None:
    owner: str | None = await pool.fetchval("SELECT owner_id FROM jobs WHERE id = $1", job_id)
    return owner


async def job_owners(pool: Pool, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await pool.fetch("SELECT id, owner_id FROM jobs WHERE id = ANY($1::uuid[])", job_ids)
    return {row["id"]: row["owner_id"] for row in rows}


# What status_message reads of a job_events row (the webhook dispatcher selects them too).
_COLUMNS = "job_id, seq, event_id, stage, state, progress, message, error, created_at"


def status_message(row: Mapping[str, Any]) -> StatusMessage:
    """The feed entry of one job_events row (the columns of _COLUMNS)."""
    return StatusMessage(
        event_id=row["event_id"],
        job_id=row["job_id"],
        seq=row["seq"],
        stage=row["stage"],
        state=row["state"],
        progress=round(float(row["progress"]), 4),
        message=row["message"],
        error=row["error"],
        time=row["created_at"],
    )


async def job_history(
    pool: Pool, job_id: uuid.UUID, after_seq: int = 0, before_seq: int | None = None
) -> list[StatusMessage]:
    """The job's status events with after_seq < seq (< before_seq), in order."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM job_events "
        "WHERE job_id = $1 AND seq > $2 AND ($3::integer IS NULL OR seq < $3) ORDER BY seq",
        job_id,
        after_seq,
        before_seq,
    )
    return [status_message(row) for row in rows]


async def latest_event(pool: Pool, job_id: uuid.UUID) -> StatusMessage | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM job_events WHERE job_id = $1 ORDER BY seq DESC LIMIT 1", job_id
    )
    return None if row is None else status_message(row)


async def event_by_id(pool: Pool, event_id: str) -> StatusMessage | None:
    """The recorded status event with this id (ce_id), or None."""
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM job_events WHERE event_id = $1", event_id)
    return None if row is None else status_message(row)
