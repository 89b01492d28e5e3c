"""Request and response models of the jobs API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from mxw_shared.contracts import JobOptions, JobState, Stage
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

StageState = Literal["pending", "queued", "running", "done", "failed", "cancelled", "skipped"]


class StageView(BaseModel):
    stage: Stage
    state: StageState = Field(
        description="'pending' until the stage's service picked it up; 'skipped': the job's "
        "options do not ask for it (diarize without speakers)."
    )
    progress: float = Field(ge=0, le=1, description="Progress within this stage, 0..1.")
    attempts: int = 0
    error: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = Field(default=None, description="finished_at - started_at.")
    metrics: dict[str, Any] = Field(default_factory=dict)


class JobLinks(BaseModel):
    job: str
    audio: str
    transcript: str
    transcript_txt: str


class JobSummary(BaseModel):
    """What the transcription measured and found, from the transcribe stage's metrics."""

    language: str | None = None
    language_probability: float | None = Field(
        default=None, description="Detection confidence; absent when the language was given."
    )
    model: str | None = None
    device: str | None = None
    audio_duration_s: float | None = None
    queue_wait_s: float | None = Field(
        default=None, description="From upload to the transcriber picking the job up."
    )
    decode_s: float | None = None
    transcribe_s: float | None = None
    real_time_factor: float | None = Field(
        default=None, description="Transcription time / audio duration (lower is faster)."
    )

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any] | None) -> JobSummary:
        known = cls.model_fields
        return cls.model_validate({k: v for k, v in (metrics or {}).items() if k in known})


class JobView(BaseModel):
    id: uuid.UUID
    state: JobState
    progress: float = Field(ge=0, le=1, description="Overall progress, 0..1.")
    error: str | None = Field(default=None, description="Why the job failed, when it did.")
    filename: str | None
    sha256: str
    size_bytes: int | None
    content_type: str | None
    options: JobOptions
    source: str
    owner_id: str
    created_at: datetime
    cancelled_at: datetime | None
    stages: list[StageView]
    summary: JobSummary = Field(default_factory=JobSummary)
    links: JobLinks
    duplicate: bool = Field(
        default=False,
        description="True when this upload matched a job you already have (same audio).",
    )


class JobPage(BaseModel):
    items: list[JobView]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; absent on the last page."
    )


class TranscriptWord(BaseModel):
    start: float
    end: float
    word: str
    probability: float | None = None
    speaker: str | None = Field(default=None, description="The label of who said it.")


class TranscriptSegment(BaseModel):
    index: int = Field(
        description="The transcript segment this comes from: a segment two speakers share "
        "is split where the speaker changes, each part keeping its segment's index."
    )
    start: float
    end: float
    text: str
    speaker: str | None = Field(
        default=None,
        description="The label of who said it (`speakers` names it); absent when the job did "
        "not ask for speakers.",
    )
    words: list[TranscriptWord] | None = Field(
        default=None, description="Present when the job asked for word timestamps."
    )


class SpeakerView(BaseModel):
    label: str = Field(description="SPEAKER_01, SPEAKER_02… (by talk time, as found).")
    name: str = Field(description="The name given to the speaker, else e.g. 'Speaker 2'.")
    talk_s: float = Field(ge=0, description="Seconds the speaker talks.")


class VoiceSuggestion(BaseModel):
    """One of your voice profiles that sounds like this speaker (docs/api.md, Voice profiles)."""

    profile_id: uuid.UUID
    name: str
    similarity: float = Field(
        description="Cosine similarity of the speaker's voice to the profile's (its samples' "
        "mean), at least mxw_shared.speakers.VOICE_MATCH_THRESHOLD."
    )


class JobSpeaker(SpeakerView):
    profile_id: uuid.UUID | None = Field(
        default=None, description="The voice profile confirmed for this speaker."
    )
    suggestion: VoiceSuggestion | None = Field(
        default=None,
        description="For a speaker without a confirmed profile: your profile whose voice is "
        "closest, if close enough and not rejected for this speaker. Confirm or reject it "
        "with POST /jobs/{job_id}/speakers/{label}/voice.",
    )


class SpeakerList(BaseModel):
    job_id: uuid.UUID
    speakers: list[JobSpeaker]


class TranscriptView(BaseModel):
    job_id: uuid.UUID
    language: str | None
    language_probability: float | None
    duration: float
    model: str
    text: str
    complete: bool = Field(
        default=True, description="False for a partial transcript (e.g. a cancelled job)."
    )
    revision: int = Field(
        default=0, description="Its revision: 0 as transcribed, +1 for each correction."
    )
    segments: list[TranscriptSegment]
    speakers: list[SpeakerView] | None = Field(
        default=None, description="Who speaks, when the job asked for speakers."
    )


class ChunkView(BaseModel):
    index: int
    start: float
    end: float
    text: str
    title: str | None
    summary: str | None
    topic: str | None
    keywords: list[str]
    confidence: float | None
    method: str
    speakers: list[str] = Field(
        default_factory=list, description="The labels of the speakers the chunk contains."
    )


class ChunkList(BaseModel):
    job_id: uuid.UUID
    chunks: list[ChunkView]


class ReprocessRequest(BaseModel):
    """Run a finished job again from a stage, optionally with changed options."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_stage: Stage = Field(
        alias="from",
        description="transcribe (everything again), diarize (find the speakers again, e.g. "
        "with num_speakers; keep the transcript), chunk (keep the transcript) or embed.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description='Options to change for this run, e.g. {"chunking": "fixed"}; '
        "the others stay as they were.",
    )
    use_vocabulary: bool = Field(
        default=True,
        description="When the run transcribes again (from transcribe): merge your custom "
        "vocabulary as it is now into the hotwords (the job's, or options.hotwords), after "
        "them; false: the hotwords exactly as given or stored.",
    )
    discard_edits: bool = Field(
        default=False,
        description="From transcribe only: a transcript with corrections is transcribed again "
        "only with true (the corrections and their history are discarded); otherwise 409. "
        "Reprocessing from a later stage keeps the corrections.",
    )


# A speaker's name: shown in transcripts, subtitles and the web page, on one line.
SpeakerName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$"
    ),
]
# A speaker's label: the diarizer's (SPEAKER_01) or one a correction introduces.
SPEAKER_LABEL = r"^[A-Za-z0-9_.-]{1,64}$"
SpeakerLabel = Annotated[str, StringConstraints(pattern=SPEAKER_LABEL)]


class SpeakerRename(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: SpeakerName


class SpeakerMerge(BaseModel):
    """Everything `from` said becomes `into`'s; `from` is gone."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_label: SpeakerLabel = Field(alias="from")
    into: SpeakerLabel


class SegmentSpeaker(BaseModel):
    """Give a segment, or the part of it between start_s and end_s, to a speaker (one of the
    job's or a new label)."""

    model_config = ConfigDict(extra="forbid")

    speaker: SpeakerLabel
    start_s: float | None = Field(default=None, ge=0, description="Default: the segment's start.")
    end_s: float | None = Field(default=None, ge=0, description="Default: the segment's end.")
