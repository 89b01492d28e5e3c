import json
from pathlib import Path

from mxw_shared import topics
from mxw_shared.contracts import AudioUploaded
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
    for message in doc["components"]["messages"].values():
        ref = message["payload"]["$ref"].rsplit("/", 1)[-1]
        assert ref in doc["components"]["schemas"]


def test_json_schema_requires_what_the_model_requires():
    schema = json.loads((DOCS / "events" / "audio.uploaded.v1.schema.json").read_text())
    required = {n for n, f in AudioUploaded.model_fields.items() if f.is_required()}
    assert required <= set(schema["required"])
    assert schema["properties"]["sha256"]["pattern"] == "^[0-9a-f]{64}$"
