"""Request and response models of search."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str = Field(min_length=1, max_length=1000, description="What to look for, in words.")
    limit: int | None = Field(default=None, ge=1, le=1000)
    all: bool = Field(default=False, description="Admins only: search every user's audio.")
    job_id: uuid.UUID | None = Field(default=None, description="Only this job's chunks.")


class SearchHit(BaseModel):
    job_id: uuid.UUID
    filename: str | None
    chunk_id: int
    chunk_index: int
    text: str
    topic: str | None
    keywords: list[str]
    start_s: float
    end_s: float
    score: float = Field(description="Reciprocal-rank fusion of the meaning and words rankings.")
    vector_rank: int | None = Field(description="Rank by meaning; null: no embedding matched.")
    text_rank: int | None = Field(description="Rank by words; null: no word matched.")
    audio_url: str = Field(description="Plays the audio from where the chunk starts.")


class SearchResults(BaseModel):
    query: str
    results: list[SearchHit]
