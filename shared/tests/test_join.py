"""An extra stage and a join on the real database: two stages start from one event and a
third needs both. The stage table is a test one (the real Stage values in other roles); the
runners, the sweeper and the transitions (rerun, cancel, dead-letter replay) are the
product's, unchanged: a new stage is one table row plus one handler."""

import dataclasses
import json
import uuid

import pytest
from mxw_shared import transitions
from mxw_shared.contracts import (
    AudioUploaded,
    ChunksReady,
    EmbeddingsReady,
    Envelope,
    EventData,
    JobOptions,
    Stage,
    TranscriptReady,
)
from mxw_shared.pipeline import PermanentError, StageOutcome, StageRunner
from mxw_shared.settings import CommonSettings
from mxw_shared.stages import Pipeline, StageSpec
from mxw_shared.sweeper import StageSweeper
from mxw_shared.topics import AUDIO_UPLOADED, EMBEDDINGS_READY, TRANSCRIPT_READY, dlq

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


def runners(
    db, infra, calls: list[str], broken: set[Stage] | None = None, pipeline: Pipeline = JOINED
) -> dict[Stage, StageRunner[EventData]]:
    """The test table's runners; a stage in `broken` fails its next run for good."""
    broken = set() if broken is None else broken

    def work(stage: Stage):
        async def run(envelope, event, job, progress):
            calls.append(stage.value)
            if stage in broken:
                broken.discard(stage)
                raise PermanentError(f"{stage.value} is broken")

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
            pipeline=pipeline,
        )
        for spec in pipeline.specs
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
    } == {s.value for s in JOINED.order}


async def test_a_stage_the_job_does_not_ask_for_is_done_and_its_join_does_not_wait(
    db, infra, make_job
):
    # The product's diarize row: beside the transcriber, only when the job asks for it.
    optional = Pipeline(
        (
            JOINED[Stage.transcribe],
            dataclasses.replace(JOINED[Stage.chunk], requested_by="speakers"),
            JOINED[Stage.embed],
        )
    )
    calls: list[str] = []
    stage = runners(db, infra, calls, pipeline=optional)
    plain = await make_job()
    assert await stage[Stage.chunk].handle(*uploaded(plain)) == "not-requested"
    assert await stage[Stage.transcribe].handle(*uploaded(plain)) == "done"
    row = await db.fetchrow(
        "SELECT state, metrics FROM job_stages WHERE job_id = $1 AND stage = 'chunk'", plain
    )
    assert (row["state"], row["metrics"]) == ("done", {"requested": False})
    # The join's input came with the transcript, and nothing else is waited for.
    (transcript,) = await sent(db, plain, TRANSCRIPT_READY)
    assert await stage[Stage.embed].handle(*transcript) == "done"
    assert calls == ["transcribe", "embed"]
    assert await job_state(db, plain) == "done"

    # A job that asks for it waits for it, and it runs.
    asked = await make_job(speakers=True)
    assert await stage[Stage.transcribe].handle(*uploaded(asked)) == "done"
    (transcript,) = await sent(db, asked, TRANSCRIPT_READY)
    assert await stage[Stage.embed].handle(*transcript) == "waiting"
    assert await stage[Stage.chunk].handle(*uploaded(asked)) == "done"
    assert await job_state(db, asked) != "done"
    resent = await sent(db, asked, TRANSCRIPT_READY)
    assert len(resent) == 2  # the join's input, sent by the completion of the stage beside
    assert await stage[Stage.embed].handle(*resent[-1]) == "done"
    assert await job_state(db, asked) == "done"


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


async def run_to_done(db, stage: dict[Stage, StageRunner[EventData]], job_id: uuid.UUID) -> None:
    assert await stage[Stage.transcribe].handle(*uploaded(job_id)) == "done"
    assert await stage[Stage.chunk].handle(*uploaded(job_id)) == "done"
    (ready, *_) = await sent(db, job_id, TRANSCRIPT_READY)
    assert await stage[Stage.embed].handle(*ready) == "done"
    assert await job_state(db, job_id) == "done"


async def stage_rows(db, job_id: uuid.UUID) -> dict[str, tuple[str, int]]:
    rows = await db.fetch(
        "SELECT stage, state, generation FROM job_stages WHERE job_id = $1", job_id
    )
    return {r["stage"]: (r["state"], r["generation"]) for r in rows}


async def test_a_rerun_from_the_stage_beside_keeps_the_other_branch_and_redoes_the_join(
    db, infra, make_job
):
    job_id = await make_job()
    calls: list[str] = []
    stage = runners(db, infra, calls)
    await run_to_done(db, stage, job_id)
    inputs = len(await sent(db, job_id, AUDIO_UPLOADED))

    async with db.acquire() as conn, conn.transaction():
        generation = await transitions.rerun(
            conn,
            job_id,
            Stage.chunk,
            options=JobOptions.model_validate,
            source="tests",
            pipeline=JOINED,
        )
    assert generation == 1
    # The rerun's stages are reset, the kept one carried into the new run.
    assert await stage_rows(db, job_id) == {"transcribe": ("done", 1)}
    again = (await sent(db, job_id, AUDIO_UPLOADED))[inputs:]
    assert len(again) == 1  # the rerun stage's input, of the new generation
    assert await job_state(db, job_id) == "queued"
    # Both stages that start from audio.uploaded get it: the kept one skips it.
    assert await stage[Stage.transcribe].handle(*again[0]) == "already-finished"
    assert await stage[Stage.chunk].handle(*again[0]) == "done"
    (*_, rebuilt) = await sent(db, job_id, TRANSCRIPT_READY)  # the join, sent by "beside"
    assert await stage[Stage.embed].handle(*rebuilt) == "done"

    assert calls == ["transcribe", "chunk", "embed", "chunk", "embed"]
    assert await stage_rows(db, job_id) == {s.value: ("done", 1) for s in JOINED.order}
    assert await job_state(db, job_id) == "done"


async def test_a_cancelled_job_stops_every_branch_and_the_sweeper_leaves_it(db, infra, make_job):
    job_id = await make_job()
    calls: list[str] = []
    stage = runners(db, infra, calls)
    assert await stage[Stage.transcribe].handle(*uploaded(job_id)) == "done"

    async with db.acquire() as conn, conn.transaction():
        await transitions.cancel(conn, job_id, by="the owner", source="tests")
    assert await job_state(db, job_id) == "cancelled"
    assert await stage[Stage.chunk].handle(*uploaded(job_id)) == "cancelled"
    (ready,) = await sent(db, job_id, TRANSCRIPT_READY)
    assert await stage[Stage.embed].handle(*ready) == "cancelled"
    assert calls == ["transcribe"]
    # Cancelling twice, or rerunning a cancelled job, is refused.
    async with db.acquire() as conn, conn.transaction():
        with pytest.raises(transitions.TransitionRefused) as twice:
            await transitions.cancel(conn, job_id, by="the owner", source="tests")
        with pytest.raises(transitions.TransitionRefused) as rerun:
            await transitions.rerun(
                conn,
                job_id,
                Stage.chunk,
                options=JobOptions.model_validate,
                source="tests",
                pipeline=JOINED,
            )
    assert (twice.value.state, rerun.value.state) == ("cancelled", "cancelled")
    sweeper = StageSweeper(
        db, infra.settings(CommonSettings, "join-joiner", stuck_after_s=3600), Stage.embed, JOINED
    )
    await db.execute(
        "UPDATE job_events SET created_at = now() - interval '2 hours' WHERE job_id = $1", job_id
    )
    assert [a for a in await sweeper.sweep_once() if a.job_id == job_id] == []


async def replay(db, letter) -> transitions.Replay:
    """Replay a dead letter of the joined stage (an outbox row) as the admin API does."""
    async with db.acquire() as conn, conn.transaction():
        return await transitions.replay(
            conn,
            topic=dlq(TRANSCRIPT_READY),
            key=letter["key"].encode(),
            headers=dict(letter["headers"]),
            body=bytes(letter["payload"]),
            letter_id="test-letter",
            source="tests",
            pipeline=JOINED,
        )


async def test_a_dead_lettered_join_is_replayed_as_a_rerun_of_its_stage(db, infra, make_job):
    job_id = await make_job()
    calls: list[str] = []
    stage = runners(db, infra, calls, broken={Stage.embed})
    assert await stage[Stage.transcribe].handle(*uploaded(job_id)) == "done"
    assert await stage[Stage.chunk].handle(*uploaded(job_id)) == "done"
    (_, rebuilt) = await sent(db, job_id, TRANSCRIPT_READY)
    assert await stage[Stage.embed].handle(*rebuilt) == "failed"
    assert await job_state(db, job_id) == "failed"
    (letter,) = await db.fetch(
        "SELECT key, headers, payload FROM outbox WHERE key = $1 AND topic = $2",
        str(job_id),
        dlq(TRANSCRIPT_READY),
    )
    assert letter["headers"]["x_consumer"] == "join-joiner"

    replayed = await replay(db, letter)
    assert (replayed.action, replayed.job_id) == (transitions.Replayed.rerun, job_id)
    # Only the joined stage runs again; both branches it joins are kept.
    assert await stage_rows(db, job_id) == {"transcribe": ("done", 1), "chunk": ("done", 1)}
    (*_, rerun_input) = await sent(db, job_id, TRANSCRIPT_READY)
    assert json.loads(rerun_input[1])["generation"] == 1
    assert await stage[Stage.embed].handle(*rerun_input) == "done"
    assert await job_state(db, job_id) == "done"
    assert calls == ["transcribe", "chunk", "embed", "embed"]

    # A letter of a job that is not failed (any more) is published again as it was.
    again = await replay(db, letter)
    assert again.action == transitions.Replayed.republished
    (*_, republished) = await sent(db, job_id, TRANSCRIPT_READY)
    assert republished[0]["ce_id"] == again.event_id
    assert republished[0]["x_replay_of"] == letter["headers"]["ce_id"]
    assert republished[1] == bytes(letter["payload"])
