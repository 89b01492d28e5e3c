"""Generated contract documents: one JSON Schema per event payload and an AsyncAPI 3.0
document for the whole pipeline, written into docs/. `python -m mxw_shared.schemas` writes
them; a test fails when the committed files and the code disagree."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mxw_shared import topics
from mxw_shared.contracts import EVENT_TYPES, DeadLetter, EventData
from mxw_shared.stages import PIPELINE


def _services(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for topic, service in pairs:
        out.setdefault(topic, []).append(service)
    return {topic: ", ".join(names) for topic, names in out.items()}


# Who produces and who consumes each topic: the stage table's services, and those outside it.
PRODUCERS = {
    topics.AUDIO_UPLOADED: "gateway (or any other system)",
    **_services([(s.produces.topic, s.service) for s in PIPELINE.specs if s.produces]),
    topics.TRANSCRIPT_EDITED: "gateway (a person's correction)",
    topics.JOB_STATUS: "every stage and the gateway",
}
CONSUMERS = {
    **{t: "other systems" for t in topics.PIPELINE_TOPICS},
    **_services([(t, s.service) for s in PIPELINE.specs for t in s.topics]),
    topics.JOB_STATUS: "notifier",
}


def _schema_name(model: type[EventData]) -> str:
    return f"{model.topic}.v{_version(model)}.schema.json"


def _version(model: type[EventData]) -> int:
    return int(model.model_fields["schema_version"].default)


def json_schema(model: type[EventData]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://mxwhisper.io/schemas/{_schema_name(model)}",
        **schema,
    }


def _headers_schema(model: type[EventData]) -> dict[str, Any]:
    """The Kafka headers of one event type: its ce_type is fixed (consumers refuse a record
    whose type does not belong on the topic), so a producer can take it from here."""

    def text(description: str) -> dict[str, str]:
        return {"type": "string", "description": description}

    return {
        "type": "object",
        "required": ["ce_id", "ce_type", "ce_source", "ce_specversion"],
        "properties": {
            "ce_id": text("Unique per event; consumers de-duplicate on it."),
            "ce_type": {"type": "string", "const": model.ce_type, "description": "Event type."},
            "ce_source": text("Producing service or system."),
            "ce_specversion": {"type": "string", "const": "1.0"},
            "ce_time": {"type": "string", "format": "date-time"},
            "traceparent": text("W3C trace context of the job's trace."),
            "content-type": {"type": "string", "const": "application/json"},
        },
    }


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {"DeadLetterHeaders": DeadLetter.headers_schema()}
    for model in EVENT_TYPES:
        name = model.__name__
        schemas[name] = json_schema(model)
        schemas[name].pop("$schema")
        schemas[f"{name}Headers"] = _headers_schema(model)
        messages[name] = {
            "name": name,
            "title": name,
            "summary": (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else name,
            "contentType": "application/json",
            "headers": {"$ref": f"#/components/schemas/{name}Headers"},
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "bindings": {"kafka": {"key": {"type": "string", "format": "uuid"}}},
        }
        messages[f"{name}DeadLetter"] = {
            "name": f"{name}DeadLetter",
            "title": f"{name} dead letter",
            "summary": f"A record of {model.topic} a consumer could not handle, with the reason.",
            "contentType": "application/json",
            "headers": {
                "allOf": [
                    {"$ref": "#/components/schemas/DeadLetterHeaders"},
                    {
                        "description": "The original record's headers are kept beside the "
                        "x_* ones; values that are not text as base64:…"
                    },
                ]
            },
            "payload": {
                "description": f"The original value, as it came (it may not be a valid {name}), "
                "cut to MXW_MAX_EVENT_BYTES (x_body_bytes: the original size)."
            },
            "bindings": {"kafka": {"key": {"type": "string"}}},
        }
        for channel, suffix in ((model.topic, ""), (topics.dlq(model.topic), "DeadLetter")):
            channel_id = channel.replace(".", "_")
            channels[channel_id] = {
                "address": channel,
                "description": (
                    f"Key: job_id. Produced by {PRODUCERS[model.topic]}; "
                    f"consumed by {CONSUMERS[model.topic]}."
                    if not suffix
                    else f"Records of {model.topic} a consumer could not handle (malformed, "
                    "rejected, failed after the last attempt), with the DeadLetter headers. "
                    "Read and replayed by admins (GET /admin/dead-letters, mxw dlq)."
                ),
                "messages": {f"{name}{suffix}": {"$ref": f"#/components/messages/{name}{suffix}"}},
            }
            operations[f"publish{name}{suffix}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel_id}"},
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "MxWhisper events",
            "version": "1.0.0",
            "description": (
                "CloudEvents 1.0 in Kafka binary mode: attributes as ce_* headers, the payload "
                "as JSON value, key = job_id. Payloads are small; the database holds the data."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def render() -> dict[str, str]:
    """File name (relative to docs/) → content."""
    files = {
        f"events/{_schema_name(m)}": json.dumps(json_schema(m), indent=2) + "\n"
        for m in EVENT_TYPES
    }
    files["events/dead-letter.v1.headers.schema.json"] = (
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": "https://mxwhisper.io/schemas/dead-letter.v1.headers.schema.json",
                "title": "DeadLetter",
                "description": (DeadLetter.__doc__ or "").strip(),
                **DeadLetter.headers_schema(),
            },
            indent=2,
        )
        + "\n"
    )
    files["asyncapi.json"] = json.dumps(asyncapi(), indent=2) + "\n"
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--check", action="store_true", help="fail when files are out of date")
    args = parser.parse_args()
    stale = []
    for name, content in render().items():
        path = args.docs / name
        if args.check:
            if not path.exists() or path.read_text() != content:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    if stale:
        raise SystemExit(f"out of date (run python -m mxw_shared.schemas): {', '.join(stale)}")


if __name__ == "__main__":
    main()
