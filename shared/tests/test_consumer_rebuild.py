"""A stage consumer whose client keeps failing is replaced and the stage goes on (real
PostgreSQL and broker; the broken client is simulated by making its polls fail, as
aiokafka's did after a broker restart: a coordinator transport it had closed itself)."""

import uuid

from aiokafka.errors import KafkaError
from mxw_shared.contracts import ChunksReady, Stage, TranscriptReady
from mxw_shared.pipeline import StageOutcome, StageRunner
from mxw_shared.service import StageConsumer
from mxw_shared.settings import CommonSettings


async def test_a_client_that_keeps_failing_is_replaced_and_work_goes_on(
    db, infra, make_job, publish, wait_for
):
    async def work(envelope, event, job, progress):
        async def persist(conn):
            return None

        return StageOutcome(
            persist=persist,
            next_event=ChunksReady(job_id=job.id, owner_id=job.owner_id, chunk_count=0, method="t"),
            message="ok",
        )

    name = f"rebuild-{uuid.uuid4().hex[:8]}"
    settings = infra.settings(CommonSettings, name)
    runner = StageRunner(pool=db, settings=settings, stage=Stage.chunk, work=work)
    consumer = StageConsumer(runner, settings, group_id=name)
    consumer.rebuild_after_failures = 2
    await consumer.start()
    try:
        await wait_for("SELECT 1", predicate=lambda _: consumer.assignments >= 1, timeout_s=60)
        broken = consumer._consumer
        assert broken is not None

        async def closed_transport(*args, **kwargs):
            raise KafkaError("Unexpected error during coordination: the handler is closed")

        broken.getmany = closed_transport  # type: ignore[method-assign]
        await wait_for("SELECT 1", predicate=lambda _: consumer.rebuilds == 1, timeout_s=60)
        assert consumer._consumer is not broken
        job_id = await make_job()
        await publish(
            TranscriptReady(
                job_id=job_id, owner_id="alice", segment_count=0, duration_s=1.0, model="m"
            )
        )
        state = await wait_for(
            "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'chunk'",
            job_id,
            predicate=lambda s: s == "done",
            timeout_s=90,
        )
        assert state == "done"  # handled by the new client
        assert consumer.rebuilds == 1
    finally:
        await consumer.stop()
