import uuid

import pytest
from mxw_shared import topics
from mxw_shared.contracts import (
    EVENT_TYPES,
    AudioUploaded,
    ChunksReady,
    EmbeddingsReady,
    Envelope,
    JobOptions,
    JobState,
    JobStatus,
    Stage,
    Task,
    TranscriptReady,
    decode_headers,
    parse_event,
)
from pydantic import ValidationError

JOB = uuid.uuid4()
SHA = "a" * 64


def samples():
    return [
        AudioUploaded(
            job_id=JOB,
            owner_id="alice",
            audio_uri="file:///tmp/a.wav",
            sha256=SHA,
            size_bytes=10,
            options=JobOptions(model="tiny.en", language="EN", task=Task.translate),
        ),
        TranscriptReady(job_id=JOB, owner_id="alice", segment_count=3, duration_s=9.5, model="b"),
        ChunksReady(job_id=JOB, owner_id="alice", chunk_count=2, method="local"),
        EmbeddingsReady(job_id=JOB, owner_id="alice", chunk_count=2, model="m", dimensions=384),
        JobStatus(
            job_id=JOB, owner_id="alice", stage=Stage.embed, state=JobState.done, progress=1.0
        ),
    ]


@pytest.mark.parametrize("event", samples(), ids=lambda e: type(e).__name__)
def test_every_contract_round_trips_through_kafka_headers_and_bytes(event):
    envelope = Envelope.for_event(
        event, source="test", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    )
    wire_headers = [(k, v.encode()) for k, v in envelope.to_headers().items()]
    body = event.model_dump_json().encode()

    parsed_env, parsed = parse_event(event.topic, decode_headers(wire_headers), body)

    assert parsed == event
    assert parsed_env.id == envelope.id
    assert parsed_env.type == event.ce_type
    assert parsed_env.traceparent == envelope.traceparent
    assert parsed.schema_version == 1


def test_every_topic_has_exactly_one_contract():
    assert {t.topic for t in EVENT_TYPES} == set(topics.ALL_TOPICS)
    assert len({t.ce_type for t in EVENT_TYPES}) == len(EVENT_TYPES)


def test_event_on_the_wrong_topic_is_rejected():
    event = samples()[1]
    headers = Envelope.for_event(event, source="t").to_headers()
    with pytest.raises(ValueError, match="does not belong"):
        parse_event(topics.AUDIO_UPLOADED, headers, event.model_dump_json().encode())


def test_missing_cloudevent_headers_are_named():
    with pytest.raises(ValueError, match="ce_id"):
        parse_event(topics.CHUNKS_READY, {"ce_type": "x"}, b"{}")


def test_unknown_fields_are_ignored_so_producers_can_add_fields():
    event = samples()[2]
    headers = Envelope.for_event(event, source="t").to_headers()
    body = event.model_dump_json()[:-1] + ',"added_later":true}'
    _, parsed = parse_event(topics.CHUNKS_READY, headers, body.encode())
    assert parsed == event


def test_future_schema_version_is_refused():
    event = samples()[2]
    headers = Envelope.for_event(event, source="t").to_headers()
    body = event.model_dump_json().replace('"schema_version":1', '"schema_version":2')
    with pytest.raises(ValidationError):
        parse_event(topics.CHUNKS_READY, headers, body.encode())


@pytest.mark.parametrize(
    ("given", "expected"), [("auto", None), ("", None), ("DE", "de"), (None, None)]
)
def test_language_auto_means_detect(given, expected):
    assert JobOptions(language=given).language == expected


@pytest.mark.parametrize("bad", ["english", "e1", "de-DE-x"])
def test_language_must_be_an_iso_code(bad):
    with pytest.raises(ValidationError):
        JobOptions(language=bad)


def test_options_reject_unknown_keys():
    with pytest.raises(ValidationError):
        JobOptions.model_validate({"modle": "base"})


def test_sha256_must_be_hex():
    with pytest.raises(ValidationError):
        AudioUploaded(job_id=JOB, owner_id="a", audio_uri="file:///x", sha256="xyz")


def test_l3_job_options_refuse_control_characters():
    for field in ("model", "initial_prompt"):
        for bad in ("a\x00b", "a\x07b", "a\x7fb"):
            with pytest.raises(ValidationError, match="control characters"):
                JobOptions.model_validate({field: bad})
    # Tabs and line breaks are text.
    assert JobOptions(initial_prompt="Foxes,\n\tdogs.\r\n").initial_prompt == "Foxes,\n\tdogs.\r\n"
