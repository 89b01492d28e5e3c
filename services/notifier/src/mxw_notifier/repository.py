"""The notifier's reads: a job's owner and its status history. It writes nothing."""

from __future__ import annotations

import uuid

from mxw_shared.db import Pool

from mxw_notifier.domain import HistoryEntry, StatusMessage


async def job_owner(pool: Pool, job_id: uuid.UUID) -> str | None:
    owner: str | None = await pool.fetchval("SELECT owner_id FROM jobs WHERE id = $1", job_id)
    return owner


async def job_history(pool: Pool, job_id: uuid.UUID) -> list[HistoryEntry]:
    rows = await pool.fetch(
        "SELECT id, event_id, stage, state, progress, message, error, created_at "
        "FROM job_events WHERE job_id = $1 ORDER BY id",
        job_id,
    )
    return [
        HistoryEntry(
            id=row["id"],
            status=StatusMessage(
                event_id=row["event_id"],
                job_id=job_id,
                stage=row["stage"],
                state=row["state"],
                progress=round(float(row["progress"]), 4),
                message=row["message"],
                error=row["error"],
                time=row["created_at"],
            ),
        )
        for row in rows
    ]
