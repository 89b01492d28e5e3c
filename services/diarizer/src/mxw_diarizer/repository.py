"""Postgres access of the diarizer: a job's speaker turns and voices (its own rows)."""

from __future__ import annotations

import uuid

from mxw_shared.db import Connection

from mxw_diarizer.domain import Diarization


async def write_speakers(conn: Connection, job_id: uuid.UUID, found: Diarization) -> None:
    """Replace the job's turns and voices with this run's."""
    await conn.execute("DELETE FROM speaker_turns WHERE job_id = $1", job_id)
    await conn.executemany(
        "INSERT INTO speaker_turns (job_id, idx, start_s, end_s, speaker)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(job_id, i, t.start_s, t.end_s, t.speaker) for i, t in enumerate(found.turns)],
    )
    await conn.execute("DELETE FROM job_speakers WHERE job_id = $1", job_id)
    await conn.executemany(
        "INSERT INTO job_speakers (job_id, label, talk_s, embedding) VALUES ($1, $2, $3, $4)",
        [(job_id, v.label, v.talk_s, list(v.embedding)) for v in found.voices],
    )
