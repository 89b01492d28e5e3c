"""Read models of the jobs module: a job's view (state derived from its stage rows), the
list of jobs, a transcript (its segments attributed to speakers at read time) and its
chunks, each only for a caller who may see the job."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from mxw_shared.contracts import JobOptions, JobState, Stage
from mxw_shared.db import Pool
from mxw_shared.jobs import STAGE_ORDER, derive_job_state, job_progress
from mxw_shared.problems import Problem
from mxw_shared.speakers import Line, Turns, attribute_all, default_name
from mxw_shared.stages import PIPELINE
from mxw_shared.transcripts import full_text

from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs import repository
from mxw_gateway.jobs.domain import decode_cursor, encode_cursor
from mxw_gateway.jobs.schemas import (
    ChunkList,
    ChunkView,
    JobLinks,
    JobPage,
    JobSummary,
    JobView,
    SpeakerView,
    StageView,
    TranscriptSegment,
    TranscriptView,
    TranscriptWord,
)
from mxw_gateway.settings import GatewaySettings


def _link(settings: GatewaySettings, path: str) -> str:
    return f"{settings.public_base_url.rstrip('/')}{path}"


def build_view(
    settings: GatewaySettings, job: asyncpg.Record, stage_rows: list[asyncpg.Record]
) -> JobView:
    by_stage = {Stage(r["stage"]): r for r in stage_rows}
    state = derive_job_state(
        job["cancelled_at"] is not None, {s: r["state"] for s, r in by_stage.items()}
    )
    stages: list[StageView] = []
    error: str | None = None
    skipped = PIPELINE.not_requested(JobOptions.model_validate(job["options"] or {}))
    for stage in STAGE_ORDER:
        row = by_stage.get(stage)
        if stage in skipped:
            stages.append(StageView(stage=stage, state="skipped", progress=1.0))
            continue
        if row is None:
            stages.append(StageView(stage=stage, state="pending", progress=0.0))
            continue
        started, finished = row["started_at"], row["finished_at"]
        stages.append(
            StageView(
                stage=stage,
                state=row["state"],
                progress=1.0 if row["state"] == JobState.done else float(row["progress"]),
                attempts=row["attempts"],
                error=row["error"],
                queued_at=row["queued_at"],
                started_at=started,
                finished_at=finished,
                duration_s=(finished - started).total_seconds() if started and finished else None,
                # The transcriber's resume point is its own bookkeeping, not a measurement.
                metrics={k: v for k, v in (row["metrics"] or {}).items() if k != "checkpoint"},
            )
        )
        if row["state"] == JobState.failed and error is None:
            error = f"{stage.value} failed: {row['error'] or 'unknown error'}"
    progress = job_progress(
        state, {s: (r["state"], float(r["progress"])) for s, r in by_stage.items()}
    )
    transcribe = by_stage.get(Stage.transcribe)
    summary = JobSummary.from_metrics(transcribe["metrics"] if transcribe else None)
    base = f"/jobs/{job['id']}"
    return JobView(
        id=job["id"],
        state=state,
        progress=progress,
        error=error if state == JobState.failed else None,
        filename=job["filename"],
        sha256=job["sha256"],
        size_bytes=job["size_bytes"],
        content_type=job["content_type"],
        options=JobOptions.model_validate(job["options"] or {}),
        source=job["source"],
        owner_id=job["owner_id"],
        created_at=job["created_at"],
        cancelled_at=job["cancelled_at"],
        stages=stages,
        summary=summary,
        links=JobLinks(
            job=_link(settings, base),
            audio=_link(settings, f"{base}/audio"),
            transcript=_link(settings, f"{base}/transcript"),
            transcript_txt=_link(settings, f"{base}/transcript.txt"),
        ),
    )


def job_not_found(job_id: uuid.UUID) -> Problem:
    return Problem(404, "Not found", f"no job {job_id}")


async def load_owned_job(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> asyncpg.Record:
    """The job row if the caller may see it; another user's job is reported as missing so
    that its existence is not revealed."""
    job = await repository.fetch_job(pool, job_id)
    if job is None or (job["owner_id"] != user.sub and not user.is_admin):
        raise job_not_found(job_id)
    return job


async def get_job_view(
    pool: Pool, settings: GatewaySettings, user: CurrentUser, job_id: uuid.UUID
) -> JobView:
    job = await load_owned_job(pool, user, job_id)
    stages = await repository.fetch_stages(pool, [job_id])
    return build_view(settings, job, stages[job_id])


async def list_jobs(
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    *,
    limit: int,
    cursor: str | None,
    offset: int,
    all_users: bool,
    states: list[JobState] | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    filename: str | None = None,
) -> JobPage:
    if all_users and not user.is_admin:
        raise Problem(403, "Forbidden", "only admins may list every user's jobs")
    after: tuple[datetime, uuid.UUID] | None = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ValueError as exc:
            raise Problem(422, "Invalid request", "invalid cursor") from exc
        offset = 0
    rows = await repository.list_jobs(
        pool,
        owner_id=None if all_users else user.sub,
        limit=limit + 1,
        after=after,
        offset=offset,
        states=[s.value for s in states] if states else None,
        created_from=created_from,
        created_to=created_to,
        filename=filename,
    )
    page = rows[:limit]
    stages = await repository.fetch_stages(pool, [r["id"] for r in page])
    next_cursor = (
        encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    )
    return JobPage(
        items=[build_view(settings, r, stages[r["id"]]) for r in page], next_cursor=next_cursor
    )


def segment_view(line: Line, with_words: bool) -> TranscriptSegment:
    """One attributed line of the transcript; its words only when the job asked for them
    (they are stored for the speaker join too)."""
    return TranscriptSegment(
        index=line.segment_idx,
        start=line.start_s,
        end=line.end_s,
        text=line.text,
        speaker=line.speaker,
        words=[TranscriptWord.model_validate(w.as_json()) for w in line.words]
        if with_words and line.words is not None
        else None,
    )


def speaker_view(row: asyncpg.Record) -> SpeakerView:
    return SpeakerView(
        label=row["label"], name=row["name"] or default_name(row["label"]), talk_s=row["talk_s"]
    )


async def job_speakers(
    pool: Pool, job_id: uuid.UUID, options: JobOptions
) -> tuple[Turns, list[SpeakerView] | None]:
    """The job's speaker turns and speakers; none when it did not ask for speakers."""
    if not options.speakers:
        return Turns(()), None
    turns = Turns(await repository.fetch_turns(pool, job_id))
    return turns, [speaker_view(r) for r in await repository.fetch_speakers(pool, job_id)]


async def get_transcript(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> TranscriptView:
    return (await get_tagged_transcript(pool, user, job_id)).view


@dataclass(frozen=True)
class TaggedTranscript:
    view: TranscriptView
    etag: str  # of the transcript as it is now (edits/domain.etag), for If-Match


async def get_tagged_transcript(
    pool: Pool,
    user: CurrentUser,
    job_id: uuid.UUID,
    at_revision: AtRevision | None = None,
) -> TaggedTranscript:
    """The transcript as it is now, or as it was at an earlier revision (`at_revision`
    turns the current segment rows and turns into those of that revision)."""
    job = await load_owned_job(pool, user, job_id)
    found = await repository.fetch_transcript(pool, job_id)
    if found is None:
        raise Problem(
            409, "Transcript not ready", "the job has not been transcribed yet", job_id=str(job_id)
        )
    transcript, segments = found
    options = JobOptions.model_validate(job["options"] or {})
    turns, speakers = await job_speakers(pool, job_id, options)
    revision: int = transcript["revision"]
    rows: Sequence[Mapping[str, Any]] = segments
    text: str = transcript["text"]
    if at_revision is not None:
        revision, rows, turns = await at_revision(rows, turns)
        text = full_text(r["text"] for r in rows)
    view = TranscriptView(
        job_id=job_id,
        language=transcript["language"],
        language_probability=transcript["language_probability"],
        duration=transcript["duration_s"],
        model=transcript["model"],
        text=text,
        complete=transcript["complete"],
        revision=revision,
        segments=[
            segment_view(line, options.word_timestamps) for line in attribute_all(rows, turns)
        ],
        speakers=speakers,
    )
    return TaggedTranscript(view, transcript_etag(transcript["created_us"], transcript["revision"]))


def transcript_etag(created_us: int, revision: int) -> str:
    """The transcript's entity tag: its machine transcript (when it was written) and its
    revision. A new transcription changes the first, every edit the second."""
    return f'"{created_us:x}-{revision}"'


# (current segment rows, current turns) -> (revision, its segment rows, its turns)
AtRevision = Callable[
    [Sequence[Mapping[str, Any]], Turns],
    Awaitable[tuple[int, Sequence[Mapping[str, Any]], Turns]],
]


async def get_chunks(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> ChunkList:
    await load_owned_job(pool, user, job_id)
    rows = await repository.fetch_chunks(pool, job_id)
    return ChunkList(
        job_id=job_id,
        chunks=[
            ChunkView(
                index=r["idx"],
                start=r["start_s"],
                end=r["end_s"],
                text=r["text"],
                title=r["title"],
                summary=r["summary"],
                topic=r["topic"],
                keywords=list(r["keywords"]),
                confidence=r["confidence"],
                method=r["method"],
                speakers=list(r["speakers"]),
            )
            for r in rows
        ],
    )
