"""Postgres access of the transcriber: writes transcripts and segments (its own)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mxw_shared.contracts import Stage
from mxw_shared.db import Connection

from mxw_transcriber.domain import Transcript, TranscriptSegment, Word

STAGE = Stage.transcribe.value


# Segments are written as they arrive (so a restarted job resumes after the last one) and
# rewritten only when different, so rows that did not change keep their identity.
_UPSERT_SEGMENT = (
    "INSERT INTO segments (job_id, idx, start_s, end_s, text, avg_logprob, no_speech_prob,"
    " words) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    " ON CONFLICT (job_id, idx) DO UPDATE SET start_s = excluded.start_s,"
    " end_s = excluded.end_s, text = excluded.text, avg_logprob = excluded.avg_logprob,"
    " no_speech_prob = excluded.no_speech_prob, words = excluded.words"
    " WHERE (segments.start_s, segments.end_s, segments.text, segments.words)"
    " IS DISTINCT FROM (excluded.start_s, excluded.end_s, excluded.text, excluded.words)"
)


def _segment_row(job_id: uuid.UUID, s: TranscriptSegment) -> tuple[Any, ...]:
    return (
        job_id,
        s.idx,
        s.start_s,
        s.end_s,
        s.text,
        s.avg_logprob,
        s.no_speech_prob,
        [w.as_json() for w in s.words] if s.words is not None else None,
    )


@dataclass(frozen=True)
class Checkpoint:
    """A partial transcript of the same run (same audio, model, options and generation)."""

    position_s: float
    language: str | None
    language_probability: float | None
    segments: tuple[TranscriptSegment, ...]


async def load_checkpoint(conn: Connection, job_id: uuid.UUID, run: str) -> Checkpoint | None:
    """The persisted partial transcript of run `run` (a fingerprint), or None."""
    row = await conn.fetchrow(
        "SELECT t.language, t.language_probability, s.metrics -> 'checkpoint' AS checkpoint"
        " FROM transcripts t JOIN job_stages s ON s.job_id = t.job_id AND s.stage = $2"
        " WHERE t.job_id = $1 AND NOT t.complete",
        job_id,
        STAGE,
    )
    if row is None or not isinstance(row["checkpoint"], dict):
        return None
    checkpoint = row["checkpoint"]
    if checkpoint.get("run") != run:
        return None
    rows = await conn.fetch(
        "SELECT idx, start_s, end_s, text, avg_logprob, no_speech_prob, words FROM segments"
        " WHERE job_id = $1 ORDER BY idx",
        job_id,
    )
    segments = tuple(
        TranscriptSegment(
            idx=r["idx"],
            start_s=r["start_s"],
            end_s=r["end_s"],
            text=r["text"],
            avg_logprob=r["avg_logprob"],
            no_speech_prob=r["no_speech_prob"],
            words=(
                tuple(
                    Word(
                        start_s=w["start"],
                        end_s=w["end"],
                        word=w["word"],
                        probability=w["probability"],
                    )
                    for w in r["words"]
                )
                if r["words"] is not None
                else None
            ),
        )
        for r in rows
    )
    if [s.idx for s in segments] != list(range(len(segments))):
        return None  # not a run of ours: start over
    position = float(checkpoint.get("position_s") or 0.0)
    if segments:
        position = max(position, segments[-1].end_s)
    return Checkpoint(position, row["language"], row["language_probability"], segments)


async def start_partial(
    conn: Connection, job_id: uuid.UUID, model: str, duration_s: float, run: str
) -> None:
    """A fresh run: drop earlier results, open an empty partial transcript for `run` (a
    new machine transcript: revision 0, a new created_at, so edits of the old one no longer
    match its ETag)."""
    await conn.execute("DELETE FROM segments WHERE job_id = $1", job_id)
    await conn.execute(
        "INSERT INTO transcripts (job_id, duration_s, model, text, complete)"
        " VALUES ($1, $2, $3, '', false)"
        " ON CONFLICT (job_id) DO UPDATE SET language = NULL, language_probability = NULL,"
        " duration_s = excluded.duration_s, model = excluded.model, text = '',"
        " complete = false, created_at = now(), revision = 0",
        job_id,
        duration_s,
        model,
    )
    await save_position(conn, job_id, run, 0.0)


async def save_position(conn: Connection, job_id: uuid.UUID, run: str, position_s: float) -> None:
    await conn.execute(
        "UPDATE job_stages SET metrics = metrics || jsonb_build_object('checkpoint',"
        " jsonb_build_object('run', $3::text, 'position_s', $4::float8))"
        " WHERE job_id = $1 AND stage = $2",
        job_id,
        STAGE,
        run,
        position_s,
    )


async def set_language(
    conn: Connection, job_id: uuid.UUID, language: str | None, probability: float | None
) -> None:
    await conn.execute(
        "UPDATE transcripts SET language = $2, language_probability = $3 WHERE job_id = $1",
        job_id,
        language,
        probability,
    )


async def write_segments(
    conn: Connection, job_id: uuid.UUID, segments: Sequence[TranscriptSegment]
) -> None:
    if segments:
        await conn.executemany(_UPSERT_SEGMENT, [_segment_row(job_id, s) for s in segments])


async def finish_transcript(
    conn: Connection,
    job_id: uuid.UUID,
    model: str,
    transcript: Transcript,
    unwritten: Sequence[TranscriptSegment],
    complete: bool,
) -> None:
    """Close the run's transcript: the segments not written yet, none beyond its last, the
    full text, `complete` (false for a cancelled run's partial transcript). Idempotent."""
    await write_segments(conn, job_id, unwritten)
    await conn.execute(
        "DELETE FROM segments WHERE job_id = $1 AND idx >= $2", job_id, len(transcript.segments)
    )
    await conn.execute(
        "INSERT INTO transcripts (job_id, language, language_probability, duration_s, model,"
        " text, complete) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (job_id) DO UPDATE SET language = excluded.language,"
        " language_probability = excluded.language_probability,"
        " duration_s = excluded.duration_s, model = excluded.model, text = excluded.text,"
        " complete = excluded.complete",
        job_id,
        transcript.language,
        transcript.language_probability,
        transcript.duration_s,
        model,
        transcript.text,
        complete,
    )
