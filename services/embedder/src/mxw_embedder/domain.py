"""Pure helpers of the embedder: batching and the input rules of the HTTP API. No I/O."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

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


def encode_base64(vector: npt.NDArray[np.float32]) -> str:
    """OpenAI's `encoding_format: base64`: the raw little-endian float32 bytes, base64."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def longest_first(texts: Sequence[str]) -> list[int]:
    """Positions of `texts`, longest first. Slices of similar length pad less, which is
    what sentence-transformers' own encode() does over one call's whole input."""
    return sorted(range(len(texts)), key=lambda i: -len(texts[i]))


_VECTOR_TYPE = re.compile(r"^vector\((\d+)\)$")


def vector_column_dimensions(column_type: str) -> int | None:
    """384 for `vector(384)`; None for a `vector` column without a fixed size."""
    match = _VECTOR_TYPE.match(column_type.strip())
    if match:
        return int(match.group(1))
    if column_type.strip() == "vector":
        return None
    raise ValueError(f"not a pgvector column type: {column_type!r}")


def dimension_mismatch(model: str, model_dims: int, column_dims: int | None) -> str | None:
    """Why the model cannot write to the column, or None when it can."""
    if column_dims is None or column_dims == model_dims:
        return None
    return (
        f"embedding model {model!r} gives {model_dims}-dimensional vectors but "
        f"chunk_embeddings.embedding is vector({column_dims}); configure a "
        f"{column_dims}-dimensional model (MXW_MODEL) or migrate the column (and its HNSW "
        f"index) to vector({model_dims}) and re-embed"
    )
