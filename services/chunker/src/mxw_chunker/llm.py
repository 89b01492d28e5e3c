"""Topic chunks from any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server).

The model is shown numbered segments and answers with segment index ranges (never character
offsets), each with a title, a one-line summary, keywords and a confidence, as JSON. Every
answer is validated (in range, ordered, no overlap, full coverage); gaps of at most
`max_gap` segments are repaired by joining them to the chunk before, anything else raises
LlmFailed with a readable reason and the caller falls back to the local method. Long
transcripts are cut into windows that overlap, and merged (see `llm_ranges`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

ResponseFormat = Literal["json_schema", "json_object", "none"]


class LlmFailed(Exception):
    """The LLM could not be used for this transcript; str(exc) says why."""


class _AnswerChunk(BaseModel):
    model_config = ConfigDict(extra="ignore")

    first: int
    last: int
    title: str = Field(default="", max_length=500)
    summary: str = Field(default="", max_length=2000)
    keywords: list[str] = Field(default_factory=list)
    confidence: float = 0.5


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    chunks: list[_AnswerChunk]


ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "chunks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "first": {"type": "integer"},
                    "last": {"type": "integer"},
                    "title": {"type": "string"},
                    "summary": {"type": "string"},
                    "keywords": {"type": "array", "items": {"type": "string"}},
                    "confidence": {"type": "number"},
                },
                "required": ["first", "last", "title", "summary", "keywords", "confidence"],
            },
        }
    },
    "required": ["chunks"],
}

SYSTEM_PROMPT = (
    "You split transcripts into topics. You receive numbered transcript segments. Group "
    "consecutive segments into chunks, one topic per chunk. Every segment must belong to "
    "exactly one chunk; chunks are in order and do not overlap; the first chunk starts at "
    "the first number shown and the last chunk ends at the last number shown. Answer only "
    'with JSON: {"chunks": [{"first": <first segment number>, "last": <last segment '
    'number>, "title": <a short topic title>, "summary": <one sentence>, "keywords": '
    '[<up to 5 key phrases>], "confidence": <0..1, how sure you are this is one topic '
    "with clear boundaries>}]}"
)


@dataclass(frozen=True)
class LlmChunk:
    first: int
    last: int
    title: str
    summary: str
    keywords: tuple[str, ...]
    confidence: float
    repaired: bool = False


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_answer(content: str, first: int, last: int, max_gap: int) -> list[LlmChunk]:
    """Validate an answer for segments first..last (inclusive, absolute numbers). Gaps of
    at most `max_gap` segments join the chunk before them (at the start: the chunk after);
    anything else that is not a partition raises LlmFailed."""
    fenced = _FENCE.match(content)
    text = fenced.group(1) if fenced else content
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise LlmFailed(f"answer is not JSON ({exc.__class__.__name__}: {exc})") from exc
    if isinstance(raw, list):
        raw = {"chunks": raw}
    try:
        answer = _Answer.model_validate(raw)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise LlmFailed(f"answer does not match the schema ({where}: {problem['msg']})") from exc
    if not answer.chunks:
        raise LlmFailed("answer has no chunks")
    chunks: list[LlmChunk] = []
    expected = first
    for item in answer.chunks:
        if item.first > item.last:
            raise LlmFailed(f"range {item.first}-{item.last} is reversed")
        if item.first < first or item.last > last:
            raise LlmFailed(f"range {item.first}-{item.last} is outside {first}-{last}")
        if item.first < expected:
            raise LlmFailed(
                f"range {item.first}-{item.last} overlaps the previous one (ends at {expected - 1})"
            )
        gap = item.first - expected
        if gap > max_gap:
            raise LlmFailed(
                f"partial coverage: segments {expected}-{item.first - 1} are not in any chunk"
            )
        chunk = LlmChunk(
            first=item.first,
            last=item.last,
            title=" ".join(item.title.split())[:200],
            summary=" ".join(item.summary.split())[:500],
            keywords=tuple(k.strip() for k in item.keywords if k.strip())[:10],
            confidence=min(1.0, max(0.0, item.confidence)),
        )
        if gap:
            if chunks:
                chunks[-1] = replace(chunks[-1], last=item.first - 1, repaired=True)
            else:
                chunk = replace(chunk, first=first, repaired=True)
        chunks.append(chunk)
        expected = item.last + 1
    tail = last + 1 - expected
    if tail > max_gap:
        raise LlmFailed(f"partial coverage: segments {expected}-{last} are not in any chunk")
    if tail:
        chunks[-1] = replace(chunks[-1], last=last, repaired=True)
    return chunks


@dataclass(frozen=True)
class LlmConfig:
    url: str  # base URL of the API, e.g. http://127.0.0.1:8080/v1
    model: str
    api_key: SecretStr | None = None
    timeout_s: float = 60.0
    retries: int = 1
    response_format: ResponseFormat = "json_schema"
    temperature: float = 0.0
    window_chars: int = 12_000
    window_overlap: int = 10
    max_gap: int = 2
    max_tokens: int = 4096


class LlmClient:
    """Chat completions with bounded time: each request times out after `timeout_s`, and
    timeouts, connection errors, 429 and 5xx are retried at most `retries` times. A server
    that refuses `response_format` (400) is asked again with a plainer one."""

    def __init__(self, config: LlmConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._client = client or httpx.AsyncClient()
        self._format: ResponseFormat = config.response_format

    async def aclose(self) -> None:
        await self._client.aclose()

    def _body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if self._format == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "chunks", "schema": ANSWER_SCHEMA, "strict": True},
            }
        elif self._format == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, messages: list[dict[str, str]]) -> str:
        url = self.config.url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        last_error = "no attempt made"
        attempt = 0
        while attempt <= self.config.retries:
            try:
                response = await self._client.post(
                    url,
                    json=self._body(messages),
                    headers=headers,
                    timeout=self.config.timeout_s,
                )
            except httpx.TimeoutException:
                last_error = f"no answer within {self.config.timeout_s:g} s"
                attempt += 1
                continue
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                attempt += 1
                if attempt <= self.config.retries:
                    await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
                continue
            if response.status_code == 400 and self._format != "none":
                # Not every server knows json_schema (or response_format at all).
                self._format = "json_object" if self._format == "json_schema" else "none"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                attempt += 1
                if attempt <= self.config.retries:
                    await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
                continue
            if response.status_code != 200:
                raise LlmFailed(f"HTTP {response.status_code}: {response.text[:200]}")
            try:
                content = response.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise LlmFailed(f"not a chat completion ({type(exc).__name__})") from exc
            if not isinstance(content, str):
                raise LlmFailed("chat completion has no text content")
            return content
        raise LlmFailed(f"LLM unreachable after {self.config.retries + 1} attempts: {last_error}")


def window_end(texts: Sequence[str], start: int, budget_chars: int) -> int:
    """Last position of the window starting at `start`: as many segments as fit in the
    character budget (at least one)."""
    used = 0
    end = start
    while end < len(texts):
        used += len(texts[end]) + 8  # the "[123] " numbering and newline
        if used > budget_chars and end > start:
            break
        end += 1
    return end - 1


def prompt_for(texts: Sequence[str], first: int, last: int) -> list[dict[str, str]]:
    lines = "\n".join(f"[{i}] {texts[i].strip()}" for i in range(first, last + 1))
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Segments {first} to {last}:\n{lines}"},
    ]


async def llm_ranges(client: LlmClient, texts: Sequence[str]) -> list[LlmChunk]:
    """Chunks covering all `texts` (usable segments, in order). A window that does not
    reach the end keeps only the chunks that end before its last `window_overlap`
    segments; the next window starts right after them, so the topic in progress at the
    window's edge is judged again with what follows it. A window whose first chunk
    already runs into that overlap keeps that chunk, cut at the overlap (marked repaired)."""
    config = client.config
    n = len(texts)
    result: list[LlmChunk] = []
    start = 0
    while start < n:
        end = window_end(texts, start, config.window_chars)
        try:
            chunks = parse_answer(
                await client.complete(prompt_for(texts, start, end)), start, end, config.max_gap
            )
        except LlmFailed as exc:
            where = f"segments {start}-{end}"
            raise LlmFailed(f"{exc} [{where}]") from exc
        if end == n - 1:
            result.extend(chunks)
            break
        cut = max(start, end - config.window_overlap)  # first position of the overlap
        kept = [c for c in chunks if c.last < cut]
        if not kept:
            kept = [
                replace(chunks[0], last=max(start, min(chunks[0].last, cut - 1)), repaired=True)
            ]
        result.extend(kept)
        start = kept[-1].last + 1
    return result
