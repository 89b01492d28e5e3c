"""The stage sweeper on the real database: re-sends work whose worker was lost or whose
event vanished, backs off, gives a crash-looping job up with a reason, leaves everything
else alone, and re-sends once however many replicas sweep at the same moment."""

import asyncio
import json
import uuid

from mxw_shared import transitions
from mxw_shared.contracts import JobState, Stage
from mxw_shared.jobs import get_job, record_status
from mxw_shared.settings import CommonSettings
from mxw_shared.sweeper import StageSweeper
from mxw_shared.topics import AUDIO_UPLOADED, TRANSCRIPT_READY, dlq


def sweeper(db, infra, stage: Stage, **overrides: object) -> StageSweeper:
    settings = infra.settings(
        CommonSettings, "sweeper-test", stuck_after_s=3600, max_stage_starts=3, **overrides
    )
    return StageSweeper(db, settings, stage)


async def outbox_rows(db, job_id: uuid.UUID, topic: str) -> list[dict]:
    rows = await db.fetch(
        "SELECT headers, payload FROM outbox WHERE key = $1 AND topic = $2 ORDER BY id",
        str(job_id),
        topic,
    )
    return [{"headers": r["headers"], "payload": json.loads(bytes(r["payload"]))} for r in rows]


async def start_as(conn, job_id: uuid.UUID, stage: Stage, worker: str) -> None:
    job = await get_job(conn, job_id)
    assert job is not None
    await transitions.start(
        conn, job, stage, worker=worker, lease_s=60.0, generation=0, source="tests"
    )


async def lose_worker(db, job_id: uuid.UUID, stage: Stage) -> None:
    """A worker started the stage and died: its lease is in the past."""
    async with db.acquire() as conn:
        await start_as(conn, job_id, stage, "dead-worker")
        await conn.execute(
            "UPDATE job_stages SET lease_expires_at = now() - interval '1 s'"
            " WHERE job_id = $1 AND stage = $2",
            job_id,
            stage.value,
        )


async def test_lost_worker_input_is_resent_once_then_backs_off(db, infra, make_job):
    job_id = await make_job(model="tiny.en")
    # The job's trace so far: the gateway's audio.uploaded (already relayed).
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await db.execute(
        "INSERT INTO outbox (topic, key, headers, payload, sent_at)"
        " VALUES ('job.status', $1, $2, '\\x7b7d', now())",
        str(job_id),
        {"traceparent": trace},
    )
    await lose_worker(db, job_id, Stage.transcribe)
    sweep = sweeper(db, infra, Stage.transcribe)

    actions = [a for a in await sweep.sweep_once() if a.job_id == job_id]
    assert [(a.action, a.why) for a in actions] == [("resent", "lease expired")]
    [resent] = await outbox_rows(db, job_id, AUDIO_UPLOADED)
    assert resent["payload"]["audio_uri"] == "file:///nonexistent"
    assert resent["payload"]["options"]["model"] == "tiny.en"
    assert resent["headers"]["ce_source"] == "sweeper-test-sweeper"
    assert resent["headers"]["traceparent"] == trace  # continues the job's trace
    message = await db.fetchval(
        "SELECT message FROM job_events WHERE job_id = $1 ORDER BY id DESC LIMIT 1", job_id
    )
    assert message == "transcribe re-queued (lease expired)"

    # Right after a re-send the job is left alone (backoff), even though still stuck.
    assert not [a for a in await sweep.sweep_once() if a.job_id == job_id]
    assert len(await outbox_rows(db, job_id, AUDIO_UPLOADED)) == 1


async def test_crash_looping_stage_fails_with_reason_and_is_dead_lettered(db, infra, make_job):
    job_id = await make_job()
    sweep = sweeper(db, infra, Stage.transcribe)
    for _ in range(3):  # max_stage_starts = 3: started three times, lost three times
        await lose_worker(db, job_id, Stage.transcribe)
    actions = [a for a in await sweep.sweep_once() if a.job_id == job_id]
    assert [a.action for a in actions] == ["failed"]

    stage = await db.fetchrow(
        "SELECT state, error FROM job_stages WHERE job_id = $1 AND stage = 'transcribe'", job_id
    )
    assert stage["state"] == "failed"
    assert "started 3 times" in stage["error"]
    [dead] = await outbox_rows(db, job_id, dlq(AUDIO_UPLOADED))
    assert dead["headers"]["x_original_topic"] == AUDIO_UPLOADED
    assert "worker was lost" in dead["headers"]["x_error"]
    assert dead["headers"]["ce_type"] == "io.mxwhisper.audio.uploaded.v1"
    assert not await outbox_rows(db, job_id, AUDIO_UPLOADED)
    # A failed job is never swept again.
    assert not [a for a in await sweep.sweep_once() if a.job_id == job_id]


async def test_vanished_event_is_resent_after_inactivity_only(db, infra, make_job):
    job_id = await make_job()
    async with db.acquire() as conn:
        await conn.execute(
            "INSERT INTO job_stages (job_id, stage, state) VALUES ($1, 'transcribe', 'done')",
            job_id,
        )
        await conn.execute(
            "INSERT INTO transcripts (job_id, language, duration_s, model, text)"
            " VALUES ($1, 'en', 12.5, 'tiny.en', 'hello')",
            job_id,
        )
        await record_status(
            conn,
            job_id=job_id,
            owner_id="alice",
            stage=Stage.transcribe,
            state=JobState.running,
            progress=0.8,
            source="tests",
        )
    await db.execute("DELETE FROM outbox WHERE key = $1", str(job_id))  # "the broker lost it"
    sweep = sweeper(db, infra, Stage.chunk)

    # Recent activity: the chunker may simply be busy. Nothing is re-sent.
    assert not [a for a in await sweep.sweep_once() if a.job_id == job_id]

    await db.execute(
        "UPDATE job_events SET created_at = now() - interval '2 hours' WHERE job_id = $1", job_id
    )
    actions = [a for a in await sweep.sweep_once() if a.job_id == job_id]
    assert [(a.action, a.why) for a in actions] == [("resent", "no progress")]
    [resent] = await outbox_rows(db, job_id, TRANSCRIPT_READY)
    assert resent["payload"]["duration_s"] == 12.5
    assert resent["payload"]["language"] == "en"


async def test_cancelled_done_and_pending_jobs_are_left_alone(db, infra, make_job):
    cancelled, pending, healthy = await make_job(), await make_job(), await make_job()
    for job_id in (cancelled, pending, healthy):
        await lose_worker(db, job_id, Stage.transcribe)
    await db.execute("UPDATE jobs SET cancelled_at = now() WHERE id = $1", cancelled)
    # The re-send for `pending` would duplicate an event still waiting in the outbox.
    await db.execute(
        "INSERT INTO outbox (topic, key, headers, payload) VALUES ($1, $2, '{}', '{}')",
        AUDIO_UPLOADED,
        str(pending),
    )
    # `healthy` has a live lease again: its worker renews it.
    await db.execute(
        "UPDATE job_stages SET lease_expires_at = now() + interval '1 minute' WHERE job_id = $1",
        healthy,
    )
    actions = await sweeper(db, infra, Stage.transcribe).sweep_once()
    assert not {a.job_id for a in actions} & {cancelled, pending, healthy}


async def test_replicas_sweeping_at_once_resend_once(db, infra, make_job):
    job_id = await make_job()
    await lose_worker(db, job_id, Stage.transcribe)
    replicas = [sweeper(db, infra, Stage.transcribe) for _ in range(4)]
    results = await asyncio.gather(*(r.sweep_once() for r in replicas))
    mine = [a for actions in results for a in actions if a.job_id == job_id]
    assert len(mine) == 1
    assert len(await outbox_rows(db, job_id, AUDIO_UPLOADED)) == 1


async def test_redelivery_skips_a_live_lease_and_takes_over_a_released_one(db, infra, make_job):
    from mxw_shared.contracts import ChunksReady, Envelope, TranscriptReady
    from mxw_shared.pipeline import StageOutcome, StageRunner

    job_id = await make_job()
    runs: list[uuid.UUID] = []

    async def work(envelope, event, job, progress):
        runs.append(job.id)

        async def persist(conn):
            return None

        return StageOutcome(
            persist=persist,
            next_event=ChunksReady(job_id=job.id, owner_id=job.owner_id, chunk_count=0, method="t"),
            message="chunked",
        )

    runner = StageRunner(
        pool=db,
        settings=infra.settings(CommonSettings, "lease-test"),
        stage=Stage.chunk,
        work=work,
    )
    event = TranscriptReady(
        job_id=job_id, owner_id="alice", segment_count=0, duration_s=1.0, model="tiny.en"
    )

    def record() -> tuple[dict[str, str], bytes]:
        envelope = Envelope.for_event(event, source="tests")
        return envelope.to_headers(), event.model_dump_json().encode()

    async with db.acquire() as conn:  # another replica works on it right now
        await start_as(conn, job_id, Stage.chunk, "other-replica")
    assert await runner.handle(*record()) == "running-elsewhere"
    assert runs == []

    # That replica stopped gracefully and released the job: the next delivery takes over.
    await db.execute(
        "UPDATE job_stages SET lease_owner = NULL WHERE job_id = $1 AND stage = 'chunk'", job_id
    )
    assert await runner.handle(*record()) == "done"
    assert runs == [job_id]
