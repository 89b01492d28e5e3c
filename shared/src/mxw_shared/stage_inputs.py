"""The event a stage consumes, rebuilt from what the job row and the earlier stages stored.

Used where an input event must be announced again without the original at hand: a reprocess
from a stage (gateway) and the sweeper that re-sends work lost with a crashed worker or a
broker that came back empty.
"""

from __future__ import annotations

import uuid
from typing import Any

from mxw_shared.contracts import (
    AudioUploaded,
    ChunksReady,
    EventData,
    JobOptions,
    Stage,
    TranscriptReady,
)
from mxw_shared.db import Connection
from mxw_shared.stages import PIPELINE, Pipeline

_STORED_RESULTS = """
    SELECT t.duration_s, t.language, t.model,
           (SELECT count(*) FROM segments s WHERE s.job_id = t.job_id) AS segment_count,
           (SELECT count(*) FROM chunks c WHERE c.job_id = t.job_id) AS chunk_count,
           (SELECT min(c.method) FROM chunks c WHERE c.job_id = t.job_id) AS method
    FROM transcripts t WHERE t.job_id = $1"""


async def rebuild_stage_input(
    conn: Connection,
    job_id: uuid.UUID,
    stage: Stage,
    *,
    generation: int | None = None,
    options: JobOptions | None = None,
    pipeline: Pipeline = PIPELINE,
) -> EventData | None:
    """The input event of `stage` for the job's current run (or `generation`, with
    `options` instead of the stored ones); None when the job or the earlier stage's results
    are gone."""
    job = await conn.fetchrow(
        "SELECT id, owner_id, generation, options, audio_uri, sha256, size_bytes, filename,"
        " content_type FROM jobs WHERE id = $1",
        job_id,
    )
    if job is None:
        return None
    ids: dict[str, Any] = {
        "job_id": job["id"],
        "owner_id": job["owner_id"],
        "generation": job["generation"] if generation is None else generation,
    }
    opts = options if options is not None else JobOptions.model_validate(job["options"] or {})
    # Rebuilt by the event type the stage consumes (stage table): a new stage that starts
    # from an existing event needs nothing here.
    consumes = pipeline[stage].consumes
    if consumes is AudioUploaded:
        return AudioUploaded(
            **ids,
            audio_uri=job["audio_uri"],
            sha256=job["sha256"],
            size_bytes=job["size_bytes"],
            filename=job["filename"],
            content_type=job["content_type"],
            options=opts,
        )
    stored = await conn.fetchrow(_STORED_RESULTS, job_id)
    if stored is None:
        return None
    if consumes is TranscriptReady:
        return TranscriptReady(
            **ids,
            segment_count=stored["segment_count"],
            duration_s=stored["duration_s"],
            language=stored["language"],
            model=stored["model"],
            options=opts,
        )
    if consumes is ChunksReady:
        return ChunksReady(**ids, chunk_count=stored["chunk_count"], method=stored["method"] or "")
    raise ValueError(f"no rule rebuilds {consumes.__name__}, the input of {stage}")
