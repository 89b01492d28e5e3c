"""Request and response models of search."""

from __future__ import annotations

import datetime as dt
import uuid

from mxw_shared.contracts import NO_CONTROL_CHARACTERS
from pydantic import BaseModel, ConfigDict, Field

from mxw_gateway.search.repository import SearchMode

# Deepest page start: each ranked list fetches (offset + limit) x candidates_per_result rows,
# so deep pages cost linearly (10,000 meant ~100,000 candidates per list). Past this, 422.
MAX_OFFSET = 1000


class SearchFilters(BaseModel):
    """What narrows a search besides the caller: jobs, spoken language, upload dates."""

    model_config = ConfigDict(extra="forbid")

    all: bool = Field(default=False, description="Admins only: search every user's audio.")
    job_ids: list[uuid.UUID] = Field(
        default_factory=list, max_length=1000, description="Only these jobs' chunks."
    )
    language: str | None = Field(
        default=None,
        max_length=16,
        pattern=NO_CONTROL_CHARACTERS,
        description="Spoken language detected by the transcriber.",
    )
    created_from: dt.datetime | None = Field(
        default=None, description="Jobs uploaded at or after this time."
    )
    created_to: dt.datetime | None = Field(
        default=None, description="Jobs uploaded before this time."
    )
    speaker: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=NO_CONTROL_CHARACTERS,
        description="Only what the speaker with this name said (names are given per job, "
        "case does not matter): chunks where they speak, and their lines in each.",
    )
    voice: uuid.UUID | None = Field(
        default=None,
        description="Only what the voice profile with this id said (one of yours; speakers "
        "confirmed as it in each job): chunks where it speaks, and its lines in each.",
    )


class SearchRequest(SearchFilters):
    q: str = Field(
        min_length=1,
        max_length=1000,
        pattern=NO_CONTROL_CHARACTERS,
        description="What to look for, in words.",
    )
    mode: SearchMode = Field(
        default=SearchMode.hybrid,
        description="hybrid: meaning and words fused by reciprocal rank; vector: meaning "
        "only; text: words only (websearch syntax: quotes, OR, -word).",
    )
    limit: int | None = Field(default=None, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    job_id: uuid.UUID | None = Field(default=None, description="Only this job's chunks.")


class SimilarRequest(SearchFilters):
    limit: int | None = Field(default=None, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


class SpeakerLine(BaseModel):
    """A line of the chunk and who said it."""

    start_s: float
    end_s: float
    text: str
    speaker: str = Field(description="The speaker's label in the job (SPEAKER_01, …).")
    name: str = Field(description="The speaker's name, or 'Speaker N' when not named.")


class SegmentMatch(BaseModel):
    """A transcript segment of the hit's chunk that matches the query."""

    index: int = Field(description="The segment's idx in the job's transcript.")
    start_s: float
    end_s: float
    text: str = Field(description="The segment's text as stored now (corrections included).")
    highlight: str | None = Field(
        description="The text with the query's words in <mark>…</mark> (the chunk "
        "highlight's rule); null when there were no query words (more like this)."
    )
    score: float = Field(
        description="Meaning (cosine similarity to the query) and words (ts_rank, relative "
        "to the chunk's best segment) fused; higher is better."
    )


class SearchHit(BaseModel):
    job_id: uuid.UUID
    filename: str | None
    language: str | None
    chunk_id: int
    chunk_index: int
    text: str
    highlight: str | None = Field(
        description="The text with the words that matched the query in <mark>…</mark>; "
        "null when there were no query words (more like this)."
    )
    title: str | None
    topic: str | None
    keywords: list[str]
    start_s: float
    end_s: float
    score: float = Field(
        description="hybrid: reciprocal-rank fusion; vector: cosine similarity; "
        "text: ts_rank_cd of the words."
    )
    vector_rank: int | None = Field(description="Rank by meaning; null: no embedding matched.")
    text_rank: int | None = Field(description="Rank by words; null: no word matched.")
    speakers: list[str] = Field(
        description="Names of the speakers in the chunk, in the order they first speak; "
        "empty for a job without speakers."
    )
    lines: list[SpeakerLine] = Field(
        description="The chunk's lines with their speakers (only the filtered speaker's "
        "with `speaker` or `voice`); empty for a job without speakers."
    )
    segments: list[SegmentMatch] = Field(
        description="The chunk's transcript segments that match the query best (up to 3, "
        "best first; with `speaker` or `voice`, only segments they speak in); empty when "
        "the job's segments are not stored."
    )
    audio_url: str = Field(
        description="Plays the audio from the start of the best segment (with `speaker` or "
        "`voice`, of their line in it); from the chunk's start when it has no segments."
    )


class SearchResults(BaseModel):
    query: str
    mode: SearchMode
    offset: int
    limit: int
    next_offset: int | None = Field(description="Offset of the next page; null: last page.")
    results: list[SearchHit]
