"""Transcript editing use cases: check the caller and the If-Match tag, apply one pure
operation (edits/domain) to the segments under the job's lock, store the revision, and run
the stages after transcription again from `transcript.edited` (transitions.rerun_after_edit),
all in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from mxw_shared import transitions
from mxw_shared.contracts import EditOperation, JobOptions, TranscriptEdited
from mxw_shared.db import Connection, Pool
from mxw_shared.problems import Problem
from mxw_shared.speakers import Turn, Turns
from mxw_shared.transcripts import full_text

from mxw_gateway.auth import CurrentUser
from mxw_gateway.edits import domain, repository
from mxw_gateway.edits.domain import Change, EditRefused, Segment
from mxw_gateway.edits.schemas import RevisionList, RevisionView
from mxw_gateway.jobs import repository as jobs_repository
from mxw_gateway.jobs.lifecycle import as_problems
from mxw_gateway.jobs.views import (
    TaggedTranscript,
    get_tagged_transcript,
    load_owned_job,
    transcript_etag,
)
from mxw_gateway.settings import GatewaySettings

# (the segments as they are, the audio's duration) -> the segments after the edit
Operation = Callable[[list[Segment], float], list[Segment]]


def _refused(reason: str) -> Problem:
    return Problem(422, "Invalid edit", reason)


def matches(if_match: str, etag: str) -> bool:
    """RFC 9110 If-Match: `*` or one of the listed tags (weak ones compare weakly)."""
    tags = [t.strip().removeprefix("W/") for t in if_match.split(",")]
    return "*" in tags or etag in tags


async def load_editable_job(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> None:
    """The caller's own job: another user's is not found; an admin may read a user's
    transcript and its history but not rewrite them."""
    job = await load_owned_job(pool, user, job_id)
    if job["owner_id"] != user.sub:
        raise Problem(403, "Forbidden", "only the job's owner edits its transcript")


async def edit(
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    job_id: uuid.UUID,
    if_match: str | None,
    operation: EditOperation,
    apply: Operation,
) -> TaggedTranscript:
    """One edit of the transcript as one revision; the transcript after it."""
    await load_editable_job(pool, user, job_id)
    if if_match is None:
        raise Problem(
            428,
            "Precondition required",
            "send If-Match with the ETag of the transcript you edited (GET its transcript)",
        )
    async with pool.acquire() as conn, conn.transaction():
        with as_problems(job_id):
            locked = await transitions.lock_job(conn, job_id)
        transcript = await _checked_transcript(conn, job_id, if_match)
        segments = await repository.load_segments(conn, job_id)
        try:
            changed = apply(segments, transcript.duration_s)
        except EditRefused as exc:
            raise _refused(str(exc)) from exc
        change = domain.diff(segments, changed)
        if change.before or change.after:
            await _commit(
                conn, settings, locked, transcript, user, operation, change, changed, turns=None
            )
    return await get_tagged_transcript(pool, user, job_id)


async def _checked_transcript(
    conn: Connection, job_id: uuid.UUID, if_match: str | None
) -> repository.TranscriptRow:
    transcript = await repository.lock_transcript(conn, job_id)
    if transcript is None:
        raise Problem(409, "Transcript not ready", "the job has not been transcribed yet")
    current = transcript_etag(transcript.created_us, transcript.revision)
    if if_match is not None and not matches(if_match, current):
        raise Problem(
            412,
            "Transcript changed",
            "the transcript was changed since you read it (its revision is now "
            f"{transcript.revision}): read it again and redo your edit",
            etag=current,
            revision=transcript.revision,
        )
    return transcript


async def _commit(
    conn: Connection,
    settings: GatewaySettings,
    locked: transitions.LockedJob,
    transcript: repository.TranscriptRow,
    user: CurrentUser,
    operation: EditOperation,
    change: Change,
    segments: Sequence[Segment],
    *,
    turns: tuple[Sequence[Turn], Sequence[Turn]] | None,
) -> None:
    """Store the revision: the segments from the change on, the transcript's revision and
    text, the history row; then, when the words or their times changed, the new run of
    the stages after transcription (the chunks over the audio it touched are re-cut)."""
    job_id: uuid.UUID = locked.row["id"]
    revision = transcript.revision + 1
    if turns is not None:
        change = replace(change, turns_before=tuple(turns[0]), turns_after=tuple(turns[1]))
    await repository.write_segments_from(conn, job_id, change.first, segments[change.first :])
    await repository.set_revision(conn, job_id, revision, full_text(s.text for s in segments))
    await repository.insert_revision(
        conn,
        job_id,
        revision,
        author=user.sub,
        operation=operation.value,
        summary=domain.describe(change, operation.value),
        change=change,
    )
    if not (change.before or change.after):
        return  # only speakers moved: the chunks' speakers are refreshed in place
    start_s, end_s = change.span
    event = TranscriptEdited(
        job_id=job_id,
        owner_id=locked.owner_id,
        revision=revision,
        operation=operation,
        start_s=start_s,
        end_s=end_s,
        segment_count=len(segments),
        options=JobOptions.model_validate(locked.row["options"] or {}),
    )
    with as_problems(job_id):
        await transitions.rerun_after_edit(conn, locked, event, source=settings.service_name)


async def record_speaker_move(
    conn: Connection,
    settings: GatewaySettings,
    user: CurrentUser,
    job_id: uuid.UUID,
    if_match: str | None,
    turns_before: Sequence[Turn],
    turns_after: Sequence[Turn],
) -> None:
    """A segment given to another speaker (jobs/speakers.move_segment, in its transaction)
    as a revision of the transcript: its history shows it and a revert undoes it."""
    locked = await transitions.lock_job(conn, job_id)
    transcript = await _checked_transcript(conn, job_id, if_match)
    segments = await repository.load_segments(conn, job_id)
    await _commit(
        conn,
        settings,
        locked,
        transcript,
        user,
        EditOperation.speaker,
        Change(len(segments), (), ()),
        segments,
        turns=(turns_before, turns_after),
    )


async def revert(
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    job_id: uuid.UUID,
    if_match: str | None,
    target: int,
) -> TaggedTranscript:
    """A new revision equal to revision `target` (its segments and speaker turns)."""
    await load_editable_job(pool, user, job_id)
    if if_match is None:
        raise Problem(428, "Precondition required", "send If-Match with the transcript's ETag")
    async with pool.acquire() as conn, conn.transaction():
        with as_problems(job_id):
            locked = await transitions.lock_job(conn, job_id)
        transcript = await _checked_transcript(conn, job_id, if_match)
        if target > transcript.revision:
            raise _refused(
                f"revision {target} does not exist (the transcript is at {transcript.revision})"
            )
        segments = await repository.load_segments(conn, job_id)
        undone = await repository.changes_after(conn, job_id, target)
        old = list(segments)
        for change in undone:
            old = domain.undo(old, change)
        change = domain.diff(segments, old)
        turns: tuple[list[Turn], list[Turn]] | None = None
        earliest = next((c for c in reversed(undone) if c.turns_before is not None), None)
        if earliest is not None and earliest.turns_before is not None:
            now = await jobs_repository.fetch_turns(conn, job_id)
            if list(earliest.turns_before) != now:
                turns = (now, list(earliest.turns_before))
                await _restore_turns(conn, job_id, turns[1])
        if change.before or change.after or turns is not None:
            await _commit(
                conn,
                settings,
                locked,
                transcript,
                user,
                EditOperation.revert,
                change,
                old,
                turns=turns,
            )
            if turns is not None:
                await _refresh_speakers(conn, job_id)
    return await get_tagged_transcript(pool, user, job_id)


async def _restore_turns(conn: Connection, job_id: uuid.UUID, turns: list[Turn]) -> None:
    await jobs_repository.replace_turns(conn, job_id, turns)


async def _refresh_speakers(conn: Connection, job_id: uuid.UUID) -> None:
    # Imported here: jobs/speakers records its moves through this module.
    from mxw_gateway.jobs.speakers import refresh_chunk_speakers

    await refresh_chunk_speakers(conn, job_id)


async def revisions(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> RevisionList:
    tagged = await get_tagged_transcript(pool, user, job_id)
    rows = await repository.fetch_revisions(pool, job_id)
    return RevisionList(
        job_id=job_id,
        revision=tagged.view.revision,
        revisions=[
            RevisionView(
                revision=r["revision"],
                author=r["author"],
                created_at=r["created_at"],
                operation=EditOperation(r["operation"]),
                summary=r["summary"],
                start=r["start_s"],
                end=r["end_s"],
            )
            for r in rows
        ],
    )


async def transcript_at(
    pool: Pool, user: CurrentUser, job_id: uuid.UUID, revision: int
) -> TaggedTranscript:
    """The transcript as it was at `revision` (0: the machine transcript)."""

    async def at(
        rows: Sequence[Mapping[str, Any]], turns: Turns
    ) -> tuple[int, Sequence[Mapping[str, Any]], Turns]:
        if revision > 0 and not await _exists(pool, job_id, revision):
            raise Problem(404, "Not found", f"no revision {revision} of this transcript")
        undone = await repository.changes_after(pool, job_id, revision)
        segments = [
            Segment(r["start_s"], r["end_s"], r["text"], domain.words_from_json(r["words"]))
            for r in rows
        ]
        for change in undone:
            segments = domain.undo(segments, change)
        earliest = next((c for c in reversed(undone) if c.turns_before is not None), None)
        if earliest is not None and earliest.turns_before is not None:
            turns = Turns(earliest.turns_before)
        return revision, [_row(k, s) for k, s in enumerate(segments)], turns

    return await get_tagged_transcript(pool, user, job_id, at_revision=at)


async def _exists(pool: Pool, job_id: uuid.UUID, revision: int) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM transcript_revisions WHERE job_id = $1"
            " AND revision = $2)",
            job_id,
            revision,
        )
    )


def _row(idx: int, s: Segment) -> dict[str, Any]:
    return {
        "idx": idx,
        "start_s": s.start_s,
        "end_s": s.end_s,
        "text": s.text,
        "words": None if s.words is None else [w.as_json() for w in s.words],
    }
