"""Read-only SQL of the OpenAI-compatible API: a finished transcript with the per-segment
scores OpenAI's verbose_json reports (the jobs module's reader leaves them out)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from mxw_shared.db import Pool
from mxw_shared.jobs import job_state_sql


async def fetch_transcript(
    pool: Pool, job_id: uuid.UUID
) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
    transcript = await pool.fetchrow(
        "SELECT language, duration_s, model, text, complete FROM transcripts WHERE job_id = $1",
        job_id,
    )
    if transcript is None:
        return None
    segments = await pool.fetch(
        "SELECT idx, start_s, end_s, text, avg_logprob, no_speech_prob, words"
        " FROM segments WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    return transcript, segments


async def find_job_with_options(
    pool: Pool, owner_id: str, sha256: str, options: dict[str, Any]
) -> uuid.UUID | None:
    """The caller's newest job on this audio, asked for with exactly these options, that is
    neither cancelled nor failed in its current run (the jobs module's de-duplication rule,
    options included)."""
    job_id: uuid.UUID | None = await pool.fetchval(
        f"""SELECT j.id FROM jobs j
            WHERE j.owner_id = $1 AND j.sha256 = $2 AND j.options = $3::jsonb
              AND ({job_state_sql("j")}) NOT IN ('cancelled', 'failed')
            ORDER BY j.created_at DESC LIMIT 1""",
        owner_id,
        sha256,
        options,
    )
    return job_id
