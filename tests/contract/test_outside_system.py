"""The outside-system contract: another system that knows nothing of MxWhisper but its
AsyncAPI document (docs/asyncapi.json) publishes `audio.uploaded` and consumes
`embeddings.ready` with a plain Kafka client, and the real stack (`mxw up`, once per broker)
processes its job end to end.

Everything the outside system sends is built from the document: the channel's address, the
message's headers schema (ce_type and ce_specversion are fixed there), the payload schema,
the key binding; what it sends and what it receives is validated against the document's JSON
Schemas. Nothing here imports MxWhisper's contract models."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from jsonschema import Draft202012Validator, FormatChecker

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = json.loads((ROOT / "docs" / "asyncapi.json").read_text())
AUDIO = ROOT / "tests" / "fixtures" / "audio" / "short_en.ogg"
SOURCE = "urn:example:outside-system"
OWNER = "outside-system-user"


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """A local `$ref` of the document ("#/components/..."), followed."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local references are expected: {ref}"
        found: Any = DOCUMENT
        for part in ref[2:].split("/"):
            found = found[part]
        node = found
    return node


class Channel:
    """One channel of the document and its (only) message: what a producer sends there and
    what a consumer may expect from it."""

    def __init__(self, channel_id: str) -> None:
        channel = DOCUMENT["channels"][channel_id]
        self.address: str = channel["address"]
        (message,) = (resolve(m) for m in channel["messages"].values())
        assert message["contentType"] == "application/json"
        self.headers_schema = resolve(message["headers"])
        self.payload_schema = resolve(message["payload"])
        self.key_schema = message["bindings"]["kafka"]["key"]

    def check(self, headers: dict[str, str], payload: dict[str, Any], key: str) -> None:
        """What the document says a record must be (AssertionError with every violation)."""
        for schema, value, what in (
            (self.headers_schema, headers, "headers"),
            (self.payload_schema, payload, "payload"),
            (self.key_schema, key, "key"),
        ):
            errors = list(
                Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(value)
            )
            assert not errors, f"{self.address} {what}: {[e.message for e in errors]}"

    def headers(self) -> dict[str, str]:
        """CloudEvents binary-mode headers: the fixed values from the schema (`const`), an id
        and a time of our own, us as the source."""
        properties = self.headers_schema["properties"]
        ours = {
            "ce_id": str(uuid.uuid4()),
            "ce_source": SOURCE,
            "ce_time": datetime.now(UTC).isoformat(),
        }
        fixed = {name: p["const"] for name, p in properties.items() if "const" in p}
        headers = {**ours, **fixed}
        missing = set(self.headers_schema["required"]) - set(headers)
        assert not missing, f"the document requires headers this producer cannot fill: {missing}"
        return headers


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, launch_stack: Any, broker_kind: str
) -> Iterator[Any]:
    with launch_stack(
        tmp_path_factory.mktemp(f"contract-{broker_kind}"), broker=broker_kind
    ) as running:
        yield running


async def test_a_job_published_from_the_document_alone_comes_back_as_embeddings_ready(
    stack, broker_kind
):
    uploaded, ready = Channel("audio_uploaded"), Channel("embeddings_ready")
    # Shared storage, as with any outside system on the same machine: the stack reads
    # file:// audio only inside its blob root.
    audio = stack.data_dir / "blobs" / "outside-system" / AUDIO.name
    audio.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(AUDIO, audio)
    data = audio.read_bytes()
    job_id = str(uuid.uuid4())
    known = {
        "job_id": job_id,
        "owner_id": OWNER,
        "audio_uri": audio.as_uri(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    required = set(uploaded.payload_schema["required"])
    assert required <= set(known), (
        f"the document requires fields unknown here: {required - set(known)}"
    )
    payload = {
        **known,
        "size_bytes": len(data),
        "filename": AUDIO.name,
        "options": {"language": "en"},
    }
    assert set(payload) <= set(uploaded.payload_schema["properties"])
    headers = uploaded.headers()
    uploaded.check(headers, payload, job_id)

    # The outside system's consumer, in a group of its own, from the start of the topic.
    consumer = AIOKafkaConsumer(
        ready.address,
        bootstrap_servers=stack.info.kafka_bootstrap_servers,
        group_id=f"outside-system-{broker_kind}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.info.kafka_bootstrap_servers, acks="all"
        )
        await producer.start()
        try:
            await producer.send_and_wait(
                uploaded.address,
                value=json.dumps(payload).encode(),
                key=job_id.encode(),
                headers=[(name, value.encode()) for name, value in headers.items()],
            )
        finally:
            await producer.stop()

        record = None
        deadline = time.monotonic() + 240
        while record is None:
            assert time.monotonic() < deadline, f"no {ready.address} for job {job_id}"
            batch = await consumer.getmany(timeout_ms=500)
            record = next(
                (r for rs in batch.values() for r in rs if r.key == job_id.encode()), None
            )
    finally:
        await consumer.stop()

    got_headers = {name: value.decode() for name, value in record.headers}
    got = json.loads(record.value)
    ready.check(got_headers, got, record.key.decode())
    assert got["job_id"] == job_id
    assert got["owner_id"] == OWNER
    assert got["chunk_count"] >= 1
    # The job is the outside system's: its owner sees it done through the API.
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=30) as client:
        job = (await client.get(f"/jobs/{job_id}", headers=stack.auth(OWNER))).json()
    assert job["state"] == "done", job


async def test_the_document_fixes_the_event_type_of_every_channel():
    """A producer takes ce_type from the document: every message's headers schema fixes it,
    and differently per channel (consumers refuse a type that does not belong)."""
    types = {}
    for channel_id, channel in DOCUMENT["channels"].items():
        if channel_id.endswith("_dlq"):
            continue
        (message,) = (resolve(m) for m in channel["messages"].values())
        types[channel["address"]] = resolve(message["headers"])["properties"]["ce_type"]["const"]
    assert len(set(types.values())) == len(types), types
