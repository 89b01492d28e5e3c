"""Request and response models of voice profiles."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from mxw_gateway.jobs.schemas import SpeakerLabel, SpeakerName


class VoiceCreate(BaseModel):
    """Name a voice: the job speaker's voice becomes the profile's first sample."""

    model_config = ConfigDict(extra="forbid")

    name: SpeakerName
    job_id: uuid.UUID = Field(description="One of your jobs with speakers.")
    label: SpeakerLabel = Field(description="The speaker of that job (SPEAKER_01, …).")


class VoiceRename(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: SpeakerName


class VoiceDecision(BaseModel):
    """Confirm (accept) or turn down a profile for a job's speaker."""

    model_config = ConfigDict(extra="forbid")

    profile_id: uuid.UUID
    accept: bool = Field(
        description="true: the speaker is this voice (it takes the profile's name and adds "
        "its voice to the profile); false: it is not (never suggested again for it)."
    )


class Voice(BaseModel):
    id: uuid.UUID
    name: str
    samples: int = Field(ge=0, description="Voices the profile was named from or confirmed in.")
    created_at: datetime
    updated_at: datetime


class VoicePage(BaseModel):
    items: list[Voice]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; absent on the last page."
    )
