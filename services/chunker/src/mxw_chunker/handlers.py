"""transcript.ready → chunks.ready, with the job's chunking method; transcript.edited →
chunks.ready with only the chunks over the edited audio cut again (`recut`)."""

from __future__ import annotations

import uuid

from mxw_shared import telemetry
from mxw_shared.contracts import (
    ChunkingMethod,
    ChunksReady,
    Envelope,
    JobOptions,
    TranscriptEdited,
    TranscriptReady,
)
from mxw_shared.db import Connection, Pool
from mxw_shared.jobs import JobRow
from mxw_shared.pipeline import Progress, StageOutcome, StageWork

from mxw_chunker import recut, repository
from mxw_chunker.domain import Chunk
from mxw_chunker.methods import Chunker


async def full_cut(
    chunker: Chunker,
    pool: Pool,
    job: JobRow,
    generation: int,
    options: JobOptions,
    note: str | None = None,
) -> StageOutcome:
    """The whole transcript cut again: the job's chunks replaced, at the revision read."""
    # Read every time: a reprocessed job (new generation) may ask for another method.
    transcript = await repository.load_segments(pool, job.id)
    segments = transcript.segments
    with telemetry.span("chunk.segment", segments=len(segments)):
        result = await chunker.run(segments, options.chunking)
    chunks = result.chunks
    method = result.method.value

    async def persist(conn: Connection) -> None:
        await repository.replace_chunks(
            conn, job.id, job.owner_id, chunks, method, transcript.revision
        )

    message = f"{len(chunks)} chunks from {len(segments)} segments ({method})"
    if result.fallback_reason is not None:
        message += f"; LLM not used: {result.fallback_reason}"
    if note is not None:
        message = f"{note}: {message}"
    return StageOutcome(
        persist=persist,
        next_event=ChunksReady(
            job_id=job.id,
            owner_id=job.owner_id,
            generation=generation,
            chunk_count=len(chunks),
            method=method,
        ),
        message=message[:2000],
        metrics={
            **result.metrics(),
            "segments": len(segments),
            "revision": transcript.revision,
            # After an edit with no chunks yet: every chunk is the cut's.
            **({"recut": len(chunks), "kept": 0} if note is not None else {}),
        },
    )


def chunk_transcript(chunker: Chunker, pool: Pool) -> StageWork[TranscriptReady]:
    async def work(
        envelope: Envelope, event: TranscriptReady, job: JobRow, progress: Progress
    ) -> StageOutcome:
        return await full_cut(chunker, pool, job, event.generation, event.options)

    return work


def _unchanged(
    job_id: uuid.UUID, owner_id: str, event: TranscriptEdited, state: repository.RecutState
) -> StageOutcome:
    """A stale edit (the chunks are cut from a newer revision): nothing to do; the embedder
    is still told, so the run ends (it embeds only chunks that lack a vector)."""

    async def persist(conn: Connection) -> None:
        return None

    cut_at = recut.chunks_revision(state.chunks)
    return StageOutcome(
        persist=persist,
        next_event=ChunksReady(
            job_id=job_id,
            owner_id=owner_id,
            generation=event.generation,
            chunk_count=len(state.chunks),
            method=state.method or "none",
            changed_only=True,
        ),
        message=f"revision {event.revision} is stale: the chunks are cut from revision {cut_at}",
        metrics={"recut": 0, "kept": len(state.chunks), "replaced": 0, "stale": True},
    )


def recut_after_edit(chunker: Chunker, pool: Pool) -> StageWork[TranscriptEdited]:
    """Only the chunks over the audio the edit (and any revision since the last cut)
    touched are cut again; the others keep their rows, ids and vectors."""

    async def work(
        envelope: Envelope, event: TranscriptEdited, job: JobRow, progress: Progress
    ) -> StageOutcome:
        state = await repository.load_recut(pool, job.id)
        cut_at = recut.chunks_revision(state.chunks)
        if cut_at is None:
            return await full_cut(
                chunker, pool, job, event.generation, event.options, note="no chunks yet"
            )
        if cut_at > event.revision:
            return _unchanged(job.id, job.owner_id, event, state)
        requested = event.options.chunking
        fixed = requested is ChunkingMethod.fixed or state.method == ChunkingMethod.fixed.value
        segments = state.transcript.segments
        plan = recut.plan_recut(
            segments,
            state.chunks,
            state.spans,
            fixed_overlap_s=chunker.settings.fixed_overlap_s if fixed else None,
        )
        cuts: list[list[Chunk]] = []
        methods: list[str] = []
        reasons: set[str] = set()
        with telemetry.span("chunk.recut", runs=len(plan.runs), kept=len(plan.kept)):
            for run in plan.runs:
                result = await chunker.run(
                    run.segments, ChunkingMethod.fixed if fixed else requested
                )
                cuts.append(recut.with_prefix(result.chunks, run.prefix))
                methods += [result.method.value] * len(result.chunks)
                if result.fallback_reason is not None:
                    reasons.add(result.fallback_reason)
        change = recut.apply_recut(plan, cuts)
        method = methods[0] if methods else state.method or "none"

        async def persist(conn: Connection) -> None:
            await repository.apply_recut(
                conn, job.id, job.owner_id, change, methods, event.revision
            )

        message = (
            f"revision {event.revision} ({event.operation.value}): {change.replaced} chunks"
            f" re-cut into {change.recut}, {change.kept} kept, {change.chunk_count} in all"
        )
        if reasons:
            message += f"; LLM not used: {'; '.join(sorted(reasons))}"
        return StageOutcome(
            persist=persist,
            next_event=ChunksReady(
                job_id=job.id,
                owner_id=job.owner_id,
                generation=event.generation,
                chunk_count=change.chunk_count,
                method=method,
                changed_only=True,
            ),
            message=message[:2000],
            metrics={
                "method": method,
                "recut": change.recut,  # chunks written by the re-cut
                "kept": change.kept,  # chunks that kept their rows (and vectors)
                "replaced": change.replaced,  # old chunks the re-cut replaced
                "chunks": change.chunk_count,
                "runs": len(plan.runs),
                "spans": len(state.spans),
                "segments": len(segments),
                "revision": event.revision,
                "from_revision": cut_at,
            },
        )

    return work
