"""Request and response bodies of transcript editing."""

from __future__ import annotations

import datetime as dt
import uuid

from mxw_shared.contracts import EditOperation
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mxw_gateway.edits.domain import MAX_SEGMENT_CHARS


class SegmentEdit(BaseModel):
    """A segment's corrected text, and/or its new start and end (seconds)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, max_length=2 * MAX_SEGMENT_CHARS)
    start: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    end: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _something(self) -> SegmentEdit:
        if self.text is None and self.start is None and self.end is None:
            raise ValueError("give text, start or end")
        return self


class SegmentSplit(BaseModel):
    """Split a segment: the second part starts at character `offset` of its text."""

    model_config = ConfigDict(extra="forbid")

    offset: int = Field(ge=0, le=2 * MAX_SEGMENT_CHARS)
    at: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Time of the cut; default: between the words on either side of the offset "
        "(or in proportion to the characters when the segment has no word times).",
    )


class SegmentMerge(BaseModel):
    """Merge a segment with the next one (no fields)."""

    model_config = ConfigDict(extra="forbid")


class RevertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int = Field(ge=0, description="The revision to go back to (0: as transcribed).")


class RevisionView(BaseModel):
    revision: int
    author: str
    created_at: dt.datetime
    operation: EditOperation
    summary: str
    start: float = Field(description="Start of the audio the revision touched, seconds.")
    end: float


class RevisionList(BaseModel):
    job_id: uuid.UUID
    revision: int = Field(description="The transcript's current revision (0: as transcribed).")
    revisions: list[RevisionView] = Field(description="Newest first.")
