"""Postgres access of the transcriber: writes transcripts and segments (its own), and adopts
jobs announced by other systems (a jobs row from the event, once)."""

from __future__ import annotations

import uuid

from mxw_shared.contracts import AudioUploaded, Envelope
from mxw_shared.db import Connection
from mxw_shared.jobs import JobRow, get_job

from mxw_transcriber.domain import Transcript


async def replace_transcript(
    conn: Connection, job_id: uuid.UUID, model: str, transcript: Transcript
) -> None:
    """Idempotent: a redelivered event rewrites the same transcript, never a second one.
    Runs in the caller's transaction."""
    await conn.execute("DELETE FROM segments WHERE job_id = $1", job_id)
    await conn.execute("DELETE FROM transcripts WHERE job_id = $1", job_id)
    await conn.execute(
        "INSERT INTO transcripts (job_id, language, language_probability, duration_s, model, text)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        job_id,
        transcript.language,
        transcript.language_probability,
        transcript.duration_s,
        model,
        transcript.text,
    )
    await conn.executemany(
        "INSERT INTO segments (job_id, idx, start_s, end_s, text, avg_logprob, no_speech_prob,"
        " words) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (
                job_id,
                s.idx,
                s.start_s,
                s.end_s,
                s.text,
                s.avg_logprob,
                s.no_speech_prob,
                [w.as_json() for w in s.words] if s.words is not None else None,
            )
            for s in transcript.segments
        ],
    )


async def adopt_job(conn: Connection, envelope: Envelope, event: AudioUploaded) -> JobRow:
    """A job announced by another system has no row yet: create it from the event. Two
    replicas adopting the same job race harmlessly (ON CONFLICT DO NOTHING)."""
    await conn.execute(
        "INSERT INTO jobs (id, owner_id, filename, audio_uri, sha256, size_bytes, content_type,"
        " options, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (id) DO NOTHING",
        event.job_id,
        event.owner_id,
        event.filename,
        event.audio_uri,
        event.sha256,
        event.size_bytes,
        event.content_type,
        event.options.model_dump(mode="json"),
        envelope.source[:255],
    )
    job = await get_job(conn, event.job_id)
    assert job is not None  # inserted above, or by a racing replica in a committed tx
    return job
