"""The stage table and what is derived from it (pure: no I/O)."""

import itertools

import pytest
from mxw_shared import kafka_access, topics
from mxw_shared.contracts import (
    AudioUploaded,
    ChunksReady,
    EmbeddingsReady,
    JobOptions,
    JobState,
    Stage,
    TranscriptReady,
)
from mxw_shared.jobs import STAGE_ORDER, derive_job_state, job_progress, overall_progress
from mxw_shared.schemas import CONSUMERS, PRODUCERS
from mxw_shared.stages import PIPELINE, Pipeline, StageSpec

# Two stages of a test table that start from one event, and one that joins them. The
# stages are the real Stage values in other roles: what matters here is the shape.
TRANSCRIBE = StageSpec(Stage.transcribe, AudioUploaded, TranscriptReady, "transcriber", (0, 0.6))
BESIDE = StageSpec(Stage.chunk, AudioUploaded, ChunksReady, "diarizer", (0.6, 0.8))
JOIN = StageSpec(
    Stage.embed,
    TranscriptReady,
    EmbeddingsReady,
    "joiner",
    (0.8, 1),
    (Stage.transcribe, Stage.chunk),
)
WITH_A_JOIN = Pipeline((TRANSCRIBE, BESIDE, JOIN))


def test_the_pipeline_transcribes_and_diarizes_side_by_side_then_chunks_and_embeds() -> None:
    order = (Stage.transcribe, Stage.diarize, Stage.chunk, Stage.embed)
    assert PIPELINE.order == STAGE_ORDER == order
    assert PIPELINE.final == (Stage.embed,)
    assert [PIPELINE[s].topic for s in STAGE_ORDER] == [
        topics.AUDIO_UPLOADED,
        topics.AUDIO_UPLOADED,
        topics.TRANSCRIPT_READY,
        topics.CHUNKS_READY,
    ]
    assert PIPELINE.stage_groups == (
        (topics.AUDIO_UPLOADED, "transcriber"),
        (topics.AUDIO_UPLOADED, "diarizer"),
        (topics.TRANSCRIPT_READY, "chunker"),
        # A person's edit re-cuts chunks: the chunker's second input, in its own group.
        (topics.TRANSCRIPT_EDITED, "chunker"),
        (topics.CHUNKS_READY, "embedder"),
    )
    assert [s.stage for s in PIPELINE.consuming(topics.TRANSCRIPT_EDITED)] == [Stage.chunk]
    # The chunker joins the transcript with the speakers: transcript.ready brings it the one,
    # and the diarizer's completion sends it again when it finishes last.
    assert PIPELINE.waits_for(Stage.chunk) == (Stage.diarize,)
    assert [s.stage for s in PIPELINE.joins_completed_by(Stage.diarize)] == [Stage.chunk]


def test_only_jobs_that_ask_for_speakers_are_diarized() -> None:
    assert PIPELINE.not_requested(JobOptions()) == (Stage.diarize,)
    assert PIPELINE.not_requested(JobOptions(speakers=True, num_speakers=2)) == ()
    # The switch is a bool option (the sweeper reads it from the stored options in SQL).
    for switch in ("language", "no_such_option"):
        with pytest.raises(ValueError, match="no bool option"):
            Pipeline((StageSpec(Stage.transcribe, AudioUploaded, None, "x", (0, 1), (), switch),))


def test_spans_cover_progress_from_zero_to_one_in_order() -> None:
    chain = [PIPELINE[s].span for s in (Stage.transcribe, Stage.chunk, Stage.embed)]
    assert chain[0][0] == 0.0
    assert chain[-1][1] == 1.0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chain))
    assert PIPELINE[Stage.diarize].span == PIPELINE[Stage.transcribe].span  # side by side
    assert overall_progress(Stage.chunk, 0.5) == pytest.approx(0.85)


def test_a_join_waits_for_both_stages_that_start_from_one_event() -> None:
    assert WITH_A_JOIN.consuming(topics.AUDIO_UPLOADED) == (TRANSCRIBE, BESIDE)
    assert WITH_A_JOIN.final == (Stage.embed,)
    # A rerun from the stage beside the transcriber redoes it and the join, not the transcript.
    assert WITH_A_JOIN.later(Stage.chunk) == (Stage.chunk, Stage.embed)
    assert WITH_A_JOIN.later(Stage.transcribe) == (Stage.transcribe, Stage.embed)
    assert WITH_A_JOIN.service_inputs == {
        "transcriber": (topics.AUDIO_UPLOADED,),
        "diarizer": (topics.AUDIO_UPLOADED,),
        "joiner": (topics.TRANSCRIPT_READY,),
    }


def test_two_final_stages_both_end_the_job() -> None:
    table = Pipeline((TRANSCRIBE, BESIDE))
    assert table.final == (Stage.transcribe, Stage.chunk)
    assert PIPELINE.later(Stage.transcribe) == (Stage.transcribe, Stage.chunk, Stage.embed)
    # Reprocessing the speakers keeps the transcript and redoes the join and what follows.
    assert PIPELINE.later(Stage.diarize) == (Stage.diarize, Stage.chunk, Stage.embed)


def test_a_dead_letter_belongs_to_the_stage_its_consumer_runs() -> None:
    assert WITH_A_JOIN.stage_of_dead_letter(topics.AUDIO_UPLOADED, "diarizer") == Stage.chunk
    assert WITH_A_JOIN.stage_of_dead_letter(topics.AUDIO_UPLOADED, "transcriber") == (
        Stage.transcribe
    )
    # Two stages read the topic and the consumer is none of them: no stage to rerun.
    assert WITH_A_JOIN.stage_of_dead_letter(topics.AUDIO_UPLOADED, "sweeper") is None
    # One stage reads it: that one, whoever dead-lettered it (a sweeper, a renamed replica).
    assert PIPELINE.stage_of_dead_letter(topics.CHUNKS_READY, "embedder-sweeper") == Stage.embed
    assert PIPELINE.stage_of_dead_letter(topics.EMBEDDINGS_READY, "x") is None


@pytest.mark.parametrize(
    ("specs", "error"),
    [
        ((TRANSCRIBE, TRANSCRIBE), "declared twice"),
        ((JOIN, TRANSCRIBE, BESIDE), "not declared before it"),
        (
            (StageSpec(Stage.chunk, AudioUploaded, None, "x", (0.5, 0.2)),),
            "not within",
        ),
    ],
)
def test_a_table_that_is_no_dag_in_order_is_refused(
    specs: tuple[StageSpec, ...], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        Pipeline(specs)


def test_the_job_is_done_when_every_final_stage_is() -> None:
    assert derive_job_state(False, {Stage.transcribe: "done", Stage.chunk: "done"}) == ("running")
    assert derive_job_state(False, {s: "done" for s in STAGE_ORDER}) == "done"


def test_access_plan_and_asyncapi_lists_follow_the_table() -> None:
    for spec in PIPELINE.specs:
        assert spec.topic in kafka_access.SERVICES[spec.service].reads
        assert spec.service in CONSUMERS[spec.topic]
        if spec.produces is not None:
            assert spec.service in PRODUCERS[spec.produces.topic]
    assert CONSUMERS[topics.EMBEDDINGS_READY] == "other systems"


def test_job_progress_follows_the_furthest_stage():
    assert job_progress(JobState.queued, {}) == 0.0
    running = {Stage.transcribe: ("running", 0.5)}
    assert job_progress(JobState.running, running) == pytest.approx(0.4)
    chunking = {Stage.transcribe: ("done", 1.0), Stage.chunk: ("running", 0.0)}
    assert job_progress(JobState.running, chunking) == pytest.approx(0.8)
    assert job_progress(JobState.done, chunking) == 1.0
