"""Partial writes of a running stage (the transcriber's segments so far) on the real
database: written only while the worker holds the stage, never interleaved with a takeover,
and stopped by a cancellation."""

import asyncio
import uuid

import pytest
from mxw_shared import transitions
from mxw_shared.contracts import Stage
from mxw_shared.jobs import JobRow, get_job
from mxw_shared.pipeline import JobCancelled, Progress


async def started(db, job_id: uuid.UUID, worker: str) -> JobRow:
    async with db.acquire() as conn:
        job = await get_job(conn, job_id)
        assert job is not None
        await transitions.start(
            conn, job, Stage.transcribe, worker=worker, lease_s=60.0, generation=0, source="t"
        )
    return job


def note(job_id: uuid.UUID, text: str):
    """A partial write: `text` appended to the job's transcript."""

    async def write(conn) -> None:
        await conn.execute(
            "INSERT INTO transcripts (job_id, duration_s, model, text) VALUES ($1, 1, 'm', $2)"
            " ON CONFLICT (job_id) DO UPDATE SET text = transcripts.text || excluded.text",
            job_id,
            text,
        )

    return write


async def written(db, job_id: uuid.UUID) -> str | None:
    text: str | None = await db.fetchval("SELECT text FROM transcripts WHERE job_id = $1", job_id)
    return text


async def test_a_checkpoint_is_written_only_while_the_worker_holds_the_stage(db, make_job):
    job_id = await make_job()
    job = await started(db, job_id, "first")
    first = Progress(db, job, Stage.transcribe, "t", worker="first")
    assert await first.checkpoint(note(job_id, "a")) is True
    assert await written(db, job_id) == "a"

    await started(db, job_id, "second")  # the first one's lease lapsed; another took over
    assert await first.checkpoint(note(job_id, "b")) is False
    assert await written(db, job_id) == "a"  # the old worker's write is dropped
    second = Progress(db, job, Stage.transcribe, "t", worker="second")
    assert await second.checkpoint(note(job_id, "c")) is True
    assert await written(db, job_id) == "ac"

    await db.execute("UPDATE jobs SET cancelled_at = now() WHERE id = $1", job_id)
    with pytest.raises(JobCancelled):
        await second.checkpoint(note(job_id, "d"))
    assert await written(db, job_id) == "ac"


async def test_a_takeover_waits_for_a_checkpoint_in_progress(db, make_job):
    """The stage row stays locked while a checkpoint writes: another worker taking the stage
    over commits after it, so a write never lands under the newer attempt."""
    job_id = await make_job()
    job = await started(db, job_id, "first")
    writing = asyncio.Event()
    release = asyncio.Event()

    async def slow_write(conn) -> None:
        await note(job_id, "a")(conn)
        writing.set()
        await release.wait()

    progress = Progress(db, job, Stage.transcribe, "t", worker="first")
    checkpoint = asyncio.create_task(progress.checkpoint(slow_write))
    await writing.wait()
    takeover = asyncio.create_task(started(db, job_id, "second"))
    await asyncio.sleep(0.3)  # a window for the takeover to (wrongly) get through
    assert not takeover.done()
    release.set()
    assert await checkpoint is True
    await takeover
    owner = await db.fetchval(
        "SELECT lease_owner FROM job_stages WHERE job_id = $1 AND stage = 'transcribe'", job_id
    )
    assert owner == "second"
    assert await written(db, job_id) == "a"
