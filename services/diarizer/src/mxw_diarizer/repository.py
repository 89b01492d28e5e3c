"""Postgres access of the diarizer: a job's speaker turns and voices (its own rows)."""

from __future__ import annotations

import uuid

import numpy as np
from mxw_shared.db import Connection
from mxw_shared.speakers import VOICE_MATCH_THRESHOLD

from mxw_diarizer.domain import Diarization, Voice


async def write_speakers(conn: Connection, job_id: uuid.UUID, found: Diarization) -> None:
    """Replace the job's turns and voices with this run's. A name a user gave a speaker of
    an earlier run, and the voice profile they confirmed for it, pass to the new speaker
    with the same voice (a job diarized again with the right number of speakers keeps
    them), never by label alone."""
    named = await conn.fetch(
        "SELECT name, profile_id, embedding FROM job_speakers"
        " WHERE job_id = $1 AND name IS NOT NULL AND embedding IS NOT NULL",
        job_id,
    )
    names = carried_names(
        found.voices, [(r["name"], np.asarray(r["embedding"].to_list())) for r in named]
    )
    profiles = {r["name"]: r["profile_id"] for r in named}
    await conn.execute("DELETE FROM speaker_turns WHERE job_id = $1", job_id)
    await conn.executemany(
        "INSERT INTO speaker_turns (job_id, idx, start_s, end_s, speaker)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(job_id, i, t.start_s, t.end_s, t.speaker) for i, t in enumerate(found.turns)],
    )
    await conn.execute("DELETE FROM job_speakers WHERE job_id = $1", job_id)
    await conn.executemany(
        "INSERT INTO job_speakers (job_id, label, name, profile_id, talk_s, embedding)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (
                job_id,
                v.label,
                names.get(v.label),
                profiles.get(names.get(v.label, "")),
                v.talk_s,
                list(v.embedding),
            )
            for v in found.voices
        ],
    )


def carried_names(
    voices: tuple[Voice, ...], earlier: list[tuple[str, np.ndarray]]
) -> dict[str, str]:
    """Label -> name: each earlier named voice to the new voice most like it, best pairs
    first, when they are alike enough to be the same person."""
    pairs = sorted(
        (
            (float(np.dot(np.asarray(v.embedding), vec / (np.linalg.norm(vec) or 1.0))), v.label, n)
            for v in voices
            for n, vec in earlier
        ),
        reverse=True,
    )
    out: dict[str, str] = {}
    used: set[str] = set()
    for similarity, label, name in pairs:
        if similarity >= VOICE_MATCH_THRESHOLD and label not in out and name not in used:
            out[label] = name
            used.add(name)
    return out
