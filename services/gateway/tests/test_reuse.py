"""De-duplication reuses a job by its current run's state (mxw_shared.jobs.job_state_sql):
a failure of a run the job was reprocessed past no longer counts."""

import uuid

from mxw_gateway.jobs.repository import find_reusable_job
from mxw_gateway.openai_api.repository import find_job_with_options


async def _job_failed_once(db, make_job, sha256: str, *, rerun: bool) -> uuid.UUID:
    """A job whose transcription failed; with `rerun`, reprocessed from transcription and
    running again."""
    job_id = await make_job("reuser", sha256=sha256)
    await db.execute(
        "INSERT INTO job_stages (job_id, stage, state, generation, error)"
        " VALUES ($1, 'transcribe', 'failed', 0, 'boom')",
        job_id,
    )
    if rerun:
        await db.execute(
            "UPDATE jobs SET generation = 1, rerun_from = 'transcribe' WHERE id = $1", job_id
        )
        await db.execute(
            "UPDATE job_stages SET state = 'running', generation = 1, error = NULL"
            " WHERE job_id = $1 AND stage = 'transcribe'",
            job_id,
        )
        # A later stage's row left from the failed run is stale too.
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state, generation, error)"
            " VALUES ($1, 'chunk', 'failed', 0, 'old')",
            job_id,
        )
    return job_id


async def test_a_job_reprocessed_after_a_failure_is_reused(db, make_job):
    sha256 = uuid.uuid4().hex * 2
    job_id = await _job_failed_once(db, make_job, sha256, rerun=True)
    async with db.acquire() as conn:
        assert await find_reusable_job(conn, "reuser", sha256) == job_id
    assert await find_job_with_options(db, "reuser", sha256, {}) == job_id


async def test_a_job_failed_in_its_current_run_is_not_reused(db, make_job):
    sha256 = uuid.uuid4().hex * 2
    await _job_failed_once(db, make_job, sha256, rerun=False)
    async with db.acquire() as conn:
        assert await find_reusable_job(conn, "reuser", sha256) is None
    assert await find_job_with_options(db, "reuser", sha256, {}) is None
