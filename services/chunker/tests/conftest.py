"""Chunker test fixtures: the labelled topic texts, the real MiniLM model, and a real
OpenAI-compatible chat server (uvicorn in a thread on a free 127.0.0.1 port).

The server reads the scenario from the request's `model`, or from a `#scenario` marker in
the segment text (so a chunker configured with one model can meet every scenario):
good · fenced · small-gap · malformed · partial · overlap · out-of-range · slow · error500 ·
no-json-schema (answers 400 to response_format json_schema, then good).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

TOPICS = json.loads((Path(__file__).parent / "data" / "topics.json").read_text())
SCENARIOS = (
    "good",
    "fenced",
    "small-gap",
    "malformed",
    "partial",
    "overlap",
    "out-of-range",
    "slow",
    "error500",
    "no-json-schema",
)
_LINE = re.compile(r"^\[(\d+)\] (.*)$", re.MULTILINE)


def timed_segments(texts: list[str], words_per_s: float = 2.5):  # type: ignore[no-untyped-def]
    from mxw_chunker.domain import Segment

    segments = []
    t = 0.0
    for i, text in enumerate(texts):
        duration = len(text.split()) / words_per_s
        segments.append(Segment(i, round(t, 2), round(t + duration, 2), text))
        t += duration + 0.4
    return segments


def three_topics():  # type: ignore[no-untyped-def]
    """Cooking, astronomy, football (16 sentences each): segments and the true ranges."""
    texts = TOPICS["cooking"] + TOPICS["astronomy"] + TOPICS["football"]
    return timed_segments(texts), [(0, 15), (16, 31), (32, 47)]


@dataclass
class FakeLlm:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    slow_s: float = 3.0


def _ranges(first: int, last: int, parts: int = 3) -> list[tuple[int, int]]:
    n = last - first + 1
    parts = max(1, min(parts, n))
    bounds = [first + round(k * n / parts) for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1] - 1) for k in range(parts)]


def _answer(first: int, last: int, scenario: str) -> str:
    ranges = _ranges(first, last)
    if scenario == "partial" and len(ranges) > 1:
        ranges = ranges[:-1]  # the last third is missing: more than a small gap
    if scenario == "overlap" and len(ranges) > 1:
        ranges[1] = (ranges[1][0] - 1, ranges[1][1])
    if scenario == "out-of-range":
        ranges[-1] = (ranges[-1][0], last + 5)
    if scenario == "small-gap" and len(ranges) > 1 and ranges[1][1] > ranges[1][0]:
        ranges[1] = (ranges[1][0] + 1, ranges[1][1])  # one segment skipped: repairable
    chunks = [
        {
            "first": a,
            "last": b,
            "title": f"Topic {k + 1}",
            "summary": f"What segments {a} to {b} talk about.",
            "keywords": [f"topic {k + 1}", "fake"],
            "confidence": 0.9,
        }
        for k, (a, b) in enumerate(ranges)
    ]
    text = json.dumps({"chunks": chunks})
    if scenario == "malformed":
        return text[: len(text) // 2]
    if scenario == "fenced":
        return f"```json\n{text}\n```"
    return text


def fake_llm_app(state: FakeLlm) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        body["_authorization"] = request.headers.get("authorization")
        state.requests.append(body)
        prompt = body["messages"][-1]["content"]
        scenario = body.get("model", "good")
        for name in SCENARIOS:
            if f"#{name}" in prompt:
                scenario = name
        if scenario == "error500":
            return JSONResponse({"error": {"message": "model crashed"}}, status_code=500)
        if scenario == "slow":
            await asyncio.sleep(state.slow_s)
        if (
            scenario == "no-json-schema"
            and body.get("response_format", {}).get("type") == "json_schema"
        ):
            return JSONResponse({"error": {"message": "unknown response_format"}}, 400)
        numbers = [int(m.group(1)) for m in _LINE.finditer(prompt)]
        content = _answer(min(numbers), max(numbers), scenario)
        return JSONResponse(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    return app


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLlm]:
    from mxw_local.infra import free_port

    port = free_port()
    state = FakeLlm(url=f"http://127.0.0.1:{port}/v1")
    server = uvicorn.Server(
        uvicorn.Config(fake_llm_app(state), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fake LLM server did not start")
        time.sleep(0.05)
    yield state
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def embed():  # type: ignore[no-untyped-def]
    """The real all-MiniLM-L6-v2, once per test session (the service fixtures take it, so
    their first job does not wait for the load; the model is cached per process)."""
    from mxw_chunker.embeddings import load_segment_embedder

    return load_segment_embedder()


@pytest.fixture(scope="session")
def three_topic_transcript():  # type: ignore[no-untyped-def]
    return three_topics()


@pytest.fixture(scope="session")
def make_segments():  # type: ignore[no-untyped-def]
    return timed_segments
