"""Corrections of who said what: name a speaker, merge two, give a segment (or part of one)
to another speaker. Each is one transaction over the diarizer's rows (job_speakers,
speaker_turns) and the chunks' speaker labels, which are recomputed from the speaker join
(mxw_shared.speakers) as the chunker finds them; the transcript itself is never rewritten,
so every reader shows the change at once. Nothing is announced: no stage reads these rows
after the chunker."""

from __future__ import annotations

import uuid

from mxw_shared.contracts import JobOptions, JobState, Stage
from mxw_shared.db import Connection, Pool
from mxw_shared.problems import Problem
from mxw_shared.speakers import VOICE_MATCH_THRESHOLD, Turns, attribute_all, reassign, speakers_in

from mxw_gateway.auth import CurrentUser
from mxw_gateway.edits import service as edits
from mxw_gateway.jobs import repository
from mxw_gateway.jobs.schemas import (
    JobSpeaker,
    SegmentSpeaker,
    SpeakerList,
    SpeakerView,
    VoiceSuggestion,
)
from mxw_gateway.jobs.views import load_owned_job, speaker_view
from mxw_gateway.settings import GatewaySettings
from mxw_gateway.voices import repository as voices


def _no_speaker(label: str) -> Problem:
    return Problem(404, "Not found", f"no speaker {label} in this job")


async def list_speakers(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> SpeakerList:
    """The job's speakers with their confirmed voice profile, and for the others the
    caller's closest profile as a suggestion. Only the job's owner gets suggestions, from
    their own profiles: an admin looking at another user's job sees none (profiles are
    never matched across users)."""
    job = await load_owned_job(pool, user, job_id)
    rows = await repository.fetch_speakers(pool, job_id)
    suggested = (
        await voices.suggestions(pool, job_id, user.sub, VOICE_MATCH_THRESHOLD)
        if job["owner_id"] == user.sub
        else {}
    )
    speakers = []
    for r in rows:
        hint = suggested.get(r["label"])
        speakers.append(
            JobSpeaker(
                **speaker_view(r).model_dump(),
                profile_id=r["profile_id"],
                suggestion=None
                if hint is None
                else VoiceSuggestion(
                    profile_id=hint["profile_id"],
                    name=hint["name"],
                    similarity=round(float(hint["similarity"]), 4),
                ),
            )
        )
    return SpeakerList(job_id=job_id, speakers=speakers)


async def load_diarized_job(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> None:
    """The caller's job, with its speakers found in its current run (409 otherwise: a
    correction must not race the diarizer writing them)."""
    job = await load_owned_job(pool, user, job_id)
    if not JobOptions.model_validate(job["options"] or {}).speakers:
        raise Problem(409, "No speakers", "the job did not ask for speakers")
    stages = await repository.fetch_stages(pool, [job_id])
    if not any(r["stage"] == Stage.diarize and r["state"] == JobState.done for r in stages[job_id]):
        raise Problem(409, "Speakers not ready", "the job's speakers are still being found")


async def refresh_chunk_speakers(conn: Connection, job_id: uuid.UUID) -> None:
    """Each chunk's speakers from the join of the transcript with the turns as they are now."""
    lines = attribute_all(
        await repository.fetch_segments(conn, job_id),
        Turns(await repository.fetch_turns(conn, job_id)),
    )
    chunks = await repository.fetch_chunk_spans(conn, job_id)
    await repository.set_chunk_speakers(
        conn, [(c["id"], list(speakers_in(lines, c["start_s"], c["end_s"]))) for c in chunks]
    )


async def rename(
    pool: Pool, user: CurrentUser, job_id: uuid.UUID, label: str, name: str
) -> SpeakerView:
    await load_diarized_job(pool, user, job_id)
    row = await repository.rename_speaker(pool, job_id, label, name)
    if row is None:
        raise _no_speaker(label)
    return speaker_view(row)


async def merge(
    pool: Pool, user: CurrentUser, job_id: uuid.UUID, source: str, into: str
) -> SpeakerList:
    if source == into:
        raise Problem(422, "Invalid request", "a speaker cannot be merged into itself")
    await load_diarized_job(pool, user, job_id)
    async with pool.acquire() as conn, conn.transaction():
        await repository.lock_job(conn, job_id)
        known = {r["label"] for r in await repository.fetch_speakers(conn, job_id)}
        for label in (source, into):
            if label not in known:
                raise _no_speaker(label)
        await repository.merge_speakers(conn, job_id, source, into)
        await refresh_chunk_speakers(conn, job_id)
    return await list_speakers(pool, user, job_id)


async def move_segment(
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    job_id: uuid.UUID,
    idx: int,
    move: SegmentSpeaker,
    if_match: str | None = None,
) -> SpeakerList:
    """Give a segment (or part of it) to a speaker: one revision of the transcript (its
    history shows it, a revert undoes it); with `if_match`, only if it is still that one."""
    await load_diarized_job(pool, user, job_id)
    async with pool.acquire() as conn, conn.transaction():
        await repository.lock_job(conn, job_id)
        segment = next(
            (s for s in await repository.fetch_segments(conn, job_id) if s["idx"] == idx), None
        )
        if segment is None:
            raise Problem(404, "Not found", f"no segment {idx} in this job")
        start_s = segment["start_s"] if move.start_s is None else move.start_s
        end_s = segment["end_s"] if move.end_s is None else move.end_s
        if not segment["start_s"] <= start_s < end_s <= segment["end_s"]:
            raise Problem(
                422,
                "Invalid request",
                f"start_s < end_s must lie within the segment "
                f"({segment['start_s']}..{segment['end_s']})",
            )
        turns = await repository.fetch_turns(conn, job_id)
        moved = reassign(turns, start_s, end_s, move.speaker)
        await repository.replace_turns(conn, job_id, moved)
        await refresh_chunk_speakers(conn, job_id)
        await edits.record_speaker_move(conn, settings, user, job_id, if_match, turns, moved)
    return await list_speakers(pool, user, job_id)
