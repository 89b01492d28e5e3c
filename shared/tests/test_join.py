"""A join on the real database: two stages start from one event and a third needs both. The
stage table is a test one (the real Stage values in other roles); the runners and their
transitions are the product's, unchanged."""

import uuid

from mxw_shared.contracts import (
    AudioUploaded,
    ChunksReady,
    EmbeddingsReady,
    Envelope,
    EventData,
    Stage,
    TranscriptReady,
)
from mxw_shared.jobs import STAGE_ORDER
from mxw_shared.pipeline import StageOutcome, StageRunner
from mxw_shared.settings import CommonSettings
from mxw_shared.stages import Pipeline, StageSpec
from mxw_shared.sweeper import StageSweeper
from mxw_shared.topics import EMBEDDINGS_READY, TRANSCRIPT_READY

# transcribe and "beside" both start from audio.uploaded; "join" consumes transcribe's
# transcript.ready but needs "beside" done too.
JOINED = Pipeline(
    (
        StageSpec(Stage.transcribe, AudioUploaded, TranscriptReady, "join-transcriber", (0, 0.6)),
        StageSpec(Stage.chunk, AudioUploaded, ChunksReady, "join-beside", (0.6, 0.8)),
        StageSpec(
            Stage.embed,
            TranscriptReady,
            EmbeddingsReady,
            "join-joiner",
            (0.8, 1),
            (Stage.transcribe, Stage.chunk),
        ),
    )
)


def runners(db, infra, calls: list[str]) -> dict[Stage, StageRunner[EventData]]:
    def work(stage: Stage):
        async def run(envelope, event, job, progress):
            calls.append(stage.value)

            async def persist(conn):
                if stage == Stage.transcribe:  # what the joined stage's input is rebuilt from
                    await conn.execute(
                        "INSERT INTO transcripts (job_id, duration_s, model, text)"
                        " VALUES ($1, 2.0, 'tiny.en', 'hello')",
                        job.id,
                    )

            ids = {"job_id": job.id, "owner_id": job.owner_id}
            produced: dict[Stage, EventData] = {
                Stage.transcribe: TranscriptReady(
                    **ids, segment_count=1, duration_s=2.0, model="tiny.en"
                ),
                Stage.chunk: ChunksReady(**ids, chunk_count=0, method="beside"),
                Stage.embed: EmbeddingsReady(**ids, chunk_count=1, model="m", dimensions=3),
            }
            return StageOutcome(persist=persist, next_event=produced[stage], message="ok")

        return run

    return {
        spec.stage: StageRunner(
            pool=db,
            settings=infra.settings(CommonSettings, spec.service),
            stage=spec.stage,
            work=work(spec.stage),
            pipeline=JOINED,
        )
        for spec in JOINED.specs
    }


def uploaded(job_id: uuid.UUID) -> tuple[dict[str, str], bytes]:
    event = AudioUploaded(
        job_id=job_id, owner_id="alice", audio_uri="file:///nowhere.wav", sha256="0" * 64
    )
    return Envelope.for_event(event, source="tests").to_headers(), event.model_dump_json().encode()


async def sent(db, job_id: uuid.UUID, topic: str) -> list[tuple[dict[str, str], bytes]]:
    rows = await db.fetch(
        "SELECT headers, payload FROM outbox WHERE key = $1 AND topic = $2 ORDER BY id",
        str(job_id),
        topic,
    )
    return [(dict(r["headers"]), bytes(r["payload"])) for r in rows]


async def job_state(db, job_id: uuid.UUID) -> str:
    state: str = await db.fetchval(
        "SELECT state FROM job_events WHERE job_id = $1 ORDER BY seq DESC LIMIT 1", job_id
    )
    return state


async def test_the_stage_that_completes_the_join_last_sends_its_input(db, infra, make_job):
    job_id = await make_job()
    calls: list[str] = []
    stage = runners(db, infra, calls)
    assert JOINED.waits_for(Stage.embed) == (Stage.chunk,)

    assert await stage[Stage.transcribe].handle(*uploaded(job_id)) == "done"
    (first,) = await sent(db, job_id, TRANSCRIPT_READY)
    # Its input came, but the stage beside has not finished: the join waits.
    assert await stage[Stage.embed].handle(*first) == "waiting"
    assert await job_state(db, job_id) == "running"

    assert await stage[Stage.chunk].handle(*uploaded(job_id)) == "done"
    # Completing the last prerequisite sent the joined stage's input, rebuilt, in the same
    # transaction.
    first_again, rebuilt = await sent(db, job_id, TRANSCRIPT_READY)
    assert first_again == first
    assert rebuilt[0]["ce_source"] == "join-beside"
    assert await stage[Stage.embed].handle(*rebuilt) == "done"

    assert calls == ["transcribe", "chunk", "embed"]
    assert len(await sent(db, job_id, EMBEDDINGS_READY)) == 1
    assert await job_state(db, job_id) == "done"
    # A late copy of the first input changes nothing.
    assert await stage[Stage.embed].handle(*first) == "duplicate"


async def test_when_the_input_s_producer_finishes_last_its_own_event_starts_the_join(
    db, infra, make_job
):
    job_id = await make_job()
    calls: list[str] = []
    stage = runners(db, infra, calls)

    assert await stage[Stage.chunk].handle(*uploaded(job_id)) == "done"
    assert await sent(db, job_id, TRANSCRIPT_READY) == []  # transcribe not done: nothing sent
    assert await stage[Stage.transcribe].handle(*uploaded(job_id)) == "done"
    (ready,) = await sent(db, job_id, TRANSCRIPT_READY)
    assert await stage[Stage.embed].handle(*ready) == "done"

    assert calls == ["chunk", "transcribe", "embed"]
    assert await job_state(db, job_id) == "done"
    assert {
        r["stage"]
        for r in await db.fetch(
            "SELECT stage FROM job_stages WHERE job_id = $1 AND state = 'done'", job_id
        )
    } == {s.value for s in STAGE_ORDER}


def test_the_product_pipeline_has_no_join_to_wait_for() -> None:
    from mxw_shared.stages import PIPELINE

    assert all(PIPELINE.waits_for(s) == () for s in PIPELINE.order)
    assert all(PIPELINE.joins_completed_by(s) == () for s in PIPELINE.order)


async def test_a_lost_join_input_is_sent_again_by_the_sweeper(db, infra, make_job):
    job_id = await make_job()
    stage = runners(db, infra, [])
    assert await stage[Stage.transcribe].handle(*uploaded(job_id)) == "done"
    assert await stage[Stage.chunk].handle(*uploaded(job_id)) == "done"
    before = await sent(db, job_id, TRANSCRIPT_READY)
    # Both inputs of the join were sent and never arrived (a broker that came back empty).
    # An hour without progress counts as stuck; only this job is that old (it is backdated),
    # so the sweep touches no other test's jobs.
    sweeper = StageSweeper(
        db, infra.settings(CommonSettings, "join-joiner", stuck_after_s=3600), Stage.embed, JOINED
    )
    await db.execute("UPDATE outbox SET sent_at = now() WHERE key = $1", str(job_id))
    await db.execute(
        "UPDATE job_events SET created_at = now() - interval '2 hours' WHERE job_id = $1", job_id
    )

    actions = await sweeper.sweep_once()

    assert [(a.job_id, a.action) for a in actions] == [(job_id, "resent")]
    again = await sent(db, job_id, TRANSCRIPT_READY)
    assert len(again) == len(before) + 1
    assert await stage[Stage.embed].handle(*again[-1]) == "done"
    assert await job_state(db, job_id) == "done"
