import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, ValidationError
from mxw_shared import topics
from mxw_shared.contracts import AudioUploaded, DeadLetter
from mxw_shared.deadletter import dlq_headers
from mxw_shared.schemas import asyncapi, render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_committed_schemas_match_the_code():
    """Fails when a contract changed without `python -m mxw_shared.schemas`."""
    for name, content in render().items():
        path = DOCS / name
        assert path.exists(), f"{path} missing: run python -m mxw_shared.schemas"
        assert path.read_text() == content, f"{path} is stale: run python -m mxw_shared.schemas"


def test_asyncapi_documents_every_topic_and_its_dead_letter_topic():
    doc = asyncapi()
    addresses = {c["address"] for c in doc["channels"].values()}
    assert doc["asyncapi"] == "3.0.0"
    assert addresses == set(topics.ALL_TOPICS) | {topics.dlq(t) for t in topics.ALL_TOPICS}
    messages = doc["components"]["messages"]
    for name, message in messages.items():
        if name.endswith("DeadLetter"):
            assert message["headers"]["allOf"][0]["$ref"].endswith("/DeadLetterHeaders")
            continue
        ref = message["payload"]["$ref"].rsplit("/", 1)[-1]
        assert ref in doc["components"]["schemas"]
    for channel in doc["channels"].values():
        (message,) = channel["messages"]
        assert message.endswith("DeadLetter") == channel["address"].endswith(".dlq")


def test_a_dead_letter_the_runner_writes_matches_the_declared_headers():
    schema = json.loads((DOCS / "events" / "dead-letter.v1.headers.schema.json").read_text())
    headers = dlq_headers(
        [("ce_id", b"1"), ("odd", b"\xff")],
        reason="boom",
        consumer="chunker",
        attempts=3,
        original_topic=topics.TRANSCRIPT_READY,
    )
    Draft202012Validator(schema).validate(headers)
    assert DeadLetter.from_headers(headers) == DeadLetter(
        original_topic=topics.TRANSCRIPT_READY, error="boom", consumer="chunker", attempts=3
    )
    with pytest.raises(ValidationError):
        Draft202012Validator(schema).validate({**headers, "x_attempts": "three"})
    assert DeadLetter.from_headers({**headers, "x_attempts": "three"}) is None
    assert DeadLetter.from_headers({"ce_id": "1"}) is None


def test_json_schema_requires_what_the_model_requires():
    schema = json.loads((DOCS / "events" / "audio.uploaded.v1.schema.json").read_text())
    required = {n for n, f in AudioUploaded.model_fields.items() if f.is_required()}
    assert required <= set(schema["required"])
    assert schema["properties"]["sha256"]["pattern"] == "^[0-9a-f]{64}$"
