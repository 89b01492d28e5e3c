"""Request model of URL ingest."""

from __future__ import annotations

from mxw_shared.contracts import JobOptions
from pydantic import BaseModel, ConfigDict, Field


class FromUrlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=4096,
        description="http(s) URL of the audio. Private, loopback and other non-public "
        "targets are refused unless the gateway is configured to allow them.",
        examples=["https://example.org/talk.mp3"],
    )
    options: JobOptions = Field(default_factory=JobOptions)
    force: bool = Field(
        default=False, description="Create a new job even for audio you uploaded before."
    )
    use_vocabulary: bool = Field(
        default=True,
        description="Merge your custom vocabulary (GET /vocabulary) into options.hotwords, "
        "after the job's own; false: only the job's.",
    )
    filename: str | None = Field(
        default=None, max_length=255, description="Name to store; default: the URL's last part."
    )
