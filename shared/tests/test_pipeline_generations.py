"""StageRunner on the real database: a stage runs again for a newer run of the job, never
twice for the same run, and never for a run the job was reprocessed past."""

import uuid

from mxw_shared.contracts import ChunksReady, Envelope, Stage, TranscriptReady
from mxw_shared.pipeline import StageOutcome, StageRunner
from mxw_shared.settings import CommonSettings


def runner_counting(db, infra, calls: list[int]) -> StageRunner[TranscriptReady]:
    async def work(envelope, event, job, progress):
        calls.append(event.generation)

        async def persist(conn):
            return None

        return StageOutcome(
            persist=persist,
            next_event=ChunksReady(
                job_id=job.id, owner_id=job.owner_id, chunk_count=0, method="test"
            ),
            message=f"run {event.generation}",
        )

    return StageRunner(
        pool=db,
        settings=infra.settings(CommonSettings, "generations-test"),
        stage=Stage.chunk,
        work=work,
    )


def ready(job_id: uuid.UUID, generation: int) -> tuple[dict[str, str], bytes]:
    event = TranscriptReady(
        job_id=job_id,
        owner_id="alice",
        segment_count=0,
        duration_s=1.0,
        model="tiny.en",
        generation=generation,
    )
    return Envelope.for_event(event, source="tests").to_headers(), event.model_dump_json().encode()


async def test_stage_runs_once_per_generation_and_skips_stale_runs(db, infra, make_job):
    job_id = await make_job()
    calls: list[int] = []
    runner = runner_counting(db, infra, calls)

    assert await runner.handle(*ready(job_id, 0)) == "done"
    assert await runner.handle(*ready(job_id, 0)) == "already-finished"  # duplicate, new ce_id

    # A rerun from chunk (transitions.rerun): the next generation, the chunk row reset.
    await db.execute("UPDATE jobs SET generation = 1 WHERE id = $1", job_id)
    await db.execute("DELETE FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", job_id)
    assert await runner.handle(*ready(job_id, 1)) == "done"  # the reprocess runs the stage again
    assert await runner.handle(*ready(job_id, 0)) == "stale-generation"  # late copy of run 0
    assert await runner.handle(*ready(job_id, 1)) == "already-finished"

    assert calls == [0, 1]
    row = await db.fetchrow(
        "SELECT state, generation, attempts FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
        job_id,
    )
    assert (row["state"], row["generation"], row["attempts"]) == ("done", 1, 1)
    next_events = await db.fetch(
        "SELECT convert_from(payload, 'UTF8')::jsonb ->> 'generation' AS generation FROM outbox"
        " WHERE key = $1 AND topic = 'chunks.ready' ORDER BY id",
        str(job_id),
    )
    assert [r["generation"] for r in next_events] == ["0", "1"]  # carried to the next stage
