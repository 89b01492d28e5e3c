"""Request and response models of the custom vocabulary."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from mxw_shared.contracts import MAX_HOTWORD_CHARS, MAX_HOTWORDS, MAX_HOTWORDS_TOTAL_CHARS
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# A term as sent: the rule (mxw_shared.contracts.normalize_hotwords) trims it, collapses its
# inner whitespace and bounds it; this only keeps a request's size sane before the rule runs.
RawTerm = Annotated[str, StringConstraints(max_length=4 * MAX_HOTWORD_CHARS)]


class VocabularyLimits(BaseModel):
    max_terms: int = MAX_HOTWORDS
    max_term_chars: int = MAX_HOTWORD_CHARS
    max_total_chars: int = Field(
        default=MAX_HOTWORDS_TOTAL_CHARS,
        description='The terms joined by ", " (as the transcriber reads them) at most this long.',
    )


class VocabularyUpdate(BaseModel):
    """The whole list, in the order to keep (PUT replaces it)."""

    model_config = ConfigDict(extra="forbid")

    terms: list[RawTerm] = Field(
        max_length=4 * MAX_HOTWORDS,
        description="Names and terms; trimmed, inner whitespace collapsed, duplicates "
        "(case-insensitive) dropped; none empty, none with a comma or a control character.",
        examples=[["Siobhan", "Kubernetes", "pgvector"]],
    )


class TermAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    term: RawTerm


class Vocabulary(BaseModel):
    terms: list[str] = Field(
        description="Your names and terms: every job of yours expects them, after its own "
        "hotwords (unless it is created with use_vocabulary false)."
    )
    updated_at: datetime | None = Field(default=None, description="Absent: never set.")
    limits: VocabularyLimits = Field(default_factory=VocabularyLimits)
