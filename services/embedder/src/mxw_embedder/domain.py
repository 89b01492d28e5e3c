"""Pure helpers of the embedder: batching and the input rules of the HTTP API. No I/O."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ChunkText:
    """The part of a chunk row the embedder needs."""

    id: int
    idx: int
    text: str
    topic: str | None = None


class InvalidInput(ValueError):
    """The request's input breaks a rule; the message says which, for the caller."""

    def __init__(self, title: str, detail: str) -> None:
        super().__init__(detail)
        self.title = title
        self.detail = detail


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items, in order."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def normalise_input(value: str | list[str]) -> list[str]:
    """OpenAI's `input` may be one string or a list of them; the model takes a list."""
    return [value] if isinstance(value, str) else list(value)


def validate_inputs(texts: Sequence[str], *, max_inputs: int, max_chars: int) -> None:
    """Reject what the model cannot embed meaningfully, before it costs model time."""
    if not texts:
        raise InvalidInput("Empty input", "input must hold at least one string")
    if len(texts) > max_inputs:
        raise InvalidInput(
            "Too many inputs",
            f"input holds {len(texts)} strings; at most {max_inputs} are allowed per request",
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput("Empty input", f"input[{i}] is empty or only whitespace")
        if len(text) > max_chars:
            raise InvalidInput(
                "Input too long",
                f"input[{i}] is {len(text)} characters; the limit is {max_chars}",
            )


def chunk_embedding_text(chunk: ChunkText) -> str:
    """What is embedded for a chunk: its text alone.

    The topic is not prepended: it is a key phrase taken from the same text (YAKE, or an
    LLM title of it), so it adds little meaning, and the model reads only the first 256
    word pieces, so a prefix would push the end of long chunks out. Full-text search
    already ranks topic words highest (weight A in chunks.tsv).
    """
    return chunk.text
