"""De-duplication reuses a job by its current run's state (mxw_shared.jobs.job_state_sql):
a failure of a run the job was reprocessed past no longer counts."""

import uuid

from mxw_gateway.jobs.repository import find_reusable_job
from mxw_gateway.openai_api.repository import find_job_with_options
from mxw_shared import transitions
from mxw_shared.contracts import JobOptions, Stage


async def _job_failed_once(db, make_job, sha256: str, *, rerun: bool) -> uuid.UUID:
    """A job whose transcription failed; with `rerun`, reprocessed from transcription and
    running again."""
    job_id = await make_job("reuser", sha256=sha256)
    await db.execute(
        "INSERT INTO job_stages (job_id, stage, state, generation, error)"
        " VALUES ($1, 'transcribe', 'failed', 0, 'boom')",
        job_id,
    )
    # A later stage's row of the failed run.
    await db.execute(
        "INSERT INTO job_stages (job_id, stage, state, generation, error)"
        " VALUES ($1, 'chunk', 'failed', 0, 'old')",
        job_id,
    )
    if rerun:
        async with db.acquire() as conn, conn.transaction():
            await transitions.rerun(
                conn,
                job_id,
                Stage.transcribe,
                options=JobOptions.model_validate,
                source="tests",
            )
    return job_id


async def test_a_job_reprocessed_after_a_failure_is_reused(db, make_job):
    sha256 = uuid.uuid4().hex * 2
    job_id = await _job_failed_once(db, make_job, sha256, rerun=True)
    async with db.acquire() as conn:
        assert await find_reusable_job(conn, "reuser", sha256) == job_id
    # The rerun stored its options in full, as the OpenAI API compares them.
    options = JobOptions().model_dump(mode="json")
    assert await find_job_with_options(db, "reuser", sha256, options) == job_id


async def test_a_job_failed_in_its_current_run_is_not_reused(db, make_job):
    sha256 = uuid.uuid4().hex * 2
    await _job_failed_once(db, make_job, sha256, rerun=False)
    async with db.acquire() as conn:
        assert await find_reusable_job(conn, "reuser", sha256) is None
    assert await find_job_with_options(db, "reuser", sha256, {}) is None
