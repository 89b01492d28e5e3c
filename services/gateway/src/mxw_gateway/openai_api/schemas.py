"""Response shapes of the OpenAI-compatible API (the fields OpenAI's own API returns)."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
Granularity = Literal["word", "segment"]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "mxwhisper"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: int = Field(ge=0, description="Audio duration, rounded up to the second.")


class Transcription(BaseModel):
    """response_format=json."""

    text: str
    usage: Usage | None = None


class Word(BaseModel):
    word: str
    start: float
    end: float


class Segment(BaseModel):
    id: int
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


class VerboseTranscription(BaseModel):
    """response_format=verbose_json."""

    task: Literal["transcribe"] = "transcribe"
    language: str = Field(description="Language name in lower case, as OpenAI writes it.")
    duration: float
    text: str
    segments: list[Segment] | None = Field(
        default=None, description="With the segment granularity (the default)."
    )
    words: list[Word] | None = Field(default=None, description="With the word granularity.")
    usage: Usage | None = None


class Translation(BaseModel):
    """response_format=json of a translation."""

    text: str = Field(description="The English translation.")


class VerboseTranslation(BaseModel):
    """response_format=verbose_json of a translation."""

    task: Literal["translate"] = "translate"
    language: str = Field(
        default="english", description="The language of the output, as OpenAI gives it."
    )
    duration: float
    text: str
    segments: list[Segment] | None = None


class DiarizedSegment(BaseModel):
    id: str
    type: Literal["transcript.text.segment"] = "transcript.text.segment"
    start: float
    end: float
    text: str
    speaker: str = Field(
        description="The name given to the speaker (GET /jobs/{id}/speakers), else A, B, … "
        "in the order of the diarizer's labels."
    )


class DiarizedTranscription(BaseModel):
    """response_format=diarized_json: segments split where the speaker changes."""

    task: Literal["transcribe"] = "transcribe"
    duration: float
    text: str
    segments: list[DiarizedSegment]
    usage: Usage | None = None


class PendingTranscription(BaseModel):
    """202: the transcript was not ready within the wait; poll the job."""

    object: Literal["transcription.job"] = "transcription.job"
    job_id: uuid.UUID
    state: str
    job: str = Field(description="URL of the job (also in the Location header).")
    transcript: str = Field(description="URL of the transcript once the job is done.")
