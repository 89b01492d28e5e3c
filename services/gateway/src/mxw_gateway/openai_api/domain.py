"""Pure rules of the OpenAI-compatible API: request fields → job options, and a stored
transcript → OpenAI's response formats. Transcriptions and translations are one path: an
`Endpoint` says which task, form fields and response formats a route takes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast, get_args

from mxw_shared.contracts import JobOptions, Task, english_only
from mxw_shared.speakers import Turns, attribute
from pydantic import ValidationError

from mxw_gateway.jobs import subtitles
from mxw_gateway.openai_api.schemas import (
    DiarizedSegment,
    DiarizedTranscription,
    Granularity,
    ResponseFormat,
    Segment,
    Transcription,
    Translation,
    Usage,
    VerboseTranscription,
    VerboseTranslation,
    Word,
)

OPENAI_MODEL = "whisper-1"
# OpenAI's diarizing model: here the default model, its speakers found by the diarizer.
DIARIZE_MODEL = "gpt-4o-transcribe-diarize"
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
# Fields the OpenAI clients send that change nothing here: accepted, not honoured.
IGNORED_FIELDS = frozenset({"temperature", "chunking_strategy", "include[]", "stream"})
SCALAR_FIELDS = frozenset({"model", "language", "prompt", "response_format"}) | IGNORED_FIELDS
LIST_FIELDS = frozenset({"timestamp_granularities[]", "timestamp_granularities"})
# OpenAI's translations take fewer fields (no language: the output is English) and formats.
TRANSLATION_FIELDS = frozenset({"model", "prompt", "response_format", "temperature"})
TRANSLATION_FORMATS: tuple[str, ...] = ("json", "text", "srt", "verbose_json", "vtt")


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI audio route: the task its jobs ask for, the form fields it takes (scalar
    and repeatable) and the response formats it answers in."""

    task: Task
    fields: frozenset[str]
    lists: frozenset[str]
    formats: tuple[str, ...]


TRANSCRIPTIONS = Endpoint(Task.transcribe, SCALAR_FIELDS, LIST_FIELDS, RESPONSE_FORMATS)
TRANSLATIONS = Endpoint(Task.translate, TRANSLATION_FIELDS, frozenset(), TRANSLATION_FORMATS)

# Whisper's language names for the codes OpenAI's verbose_json spells out; other codes are
# returned as they are.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "english",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "it": "italian",
    "pt": "portuguese",
    "nl": "dutch",
    "pl": "polish",
    "ru": "russian",
    "uk": "ukrainian",
    "sv": "swedish",
    "da": "danish",
    "no": "norwegian",
    "fi": "finnish",
    "cs": "czech",
    "tr": "turkish",
    "ar": "arabic",
    "he": "hebrew",
    "hi": "hindi",
    "zh": "chinese",
    "ja": "japanese",
    "ko": "korean",
}


class InvalidRequest(ValueError):
    """A request field OpenAI's API would refuse too; `param` names it."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class TranscriptionRequest:
    options: JobOptions
    response_format: ResponseFormat
    granularities: frozenset[str]


def resolve_model(name: str, served: Sequence[str], default: str | None) -> str | None:
    """The transcriber model for an OpenAI model name; None: the transcriber's default."""
    if name in (OPENAI_MODEL, DIARIZE_MODEL):
        return default
    if name in served:
        return name
    raise InvalidRequest(
        f"model {name!r} does not exist; use {OPENAI_MODEL}, {DIARIZE_MODEL} or one of: "
        f"{', '.join(served)}",
        "model",
    )


def parse_request(
    fields: Mapping[str, str],
    granularities: Sequence[str],
    served_models: Sequence[str],
    default_model: str | None,
    endpoint: Endpoint = TRANSCRIPTIONS,
) -> TranscriptionRequest:
    """The job options and answer format of a request to `endpoint`, whose form held only
    the fields it takes (the multipart reader refused the others)."""
    model_name = fields.get("model", "").strip()
    if not model_name:
        raise InvalidRequest("you must provide a model parameter", "model")
    model = resolve_model(model_name, served_models, default_model)
    if endpoint.task == Task.translate and model is not None and english_only(model):
        # None (the transcriber's default): unknown here; the job fails with the reason.
        shown = model_name if model == model_name else f"{model_name} ({model} here)"
        raise InvalidRequest(
            f"model {shown} is English-only and cannot translate; use a multilingual model "
            f"({', '.join(m for m in served_models if not english_only(m)) or 'e.g. base'})",
            "model",
        )
    response_format = fields.get("response_format", "").strip() or "json"
    if response_format not in endpoint.formats:
        raise InvalidRequest(
            f"response_format must be one of {', '.join(endpoint.formats)}", "response_format"
        )
    for granularity in granularities:
        if granularity not in GRANULARITIES:
            raise InvalidRequest(
                "timestamp_granularities must be word and/or segment", "timestamp_granularities"
            )
    temperature = fields.get("temperature", "").strip()
    if temperature:
        try:
            value = float(temperature)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise InvalidRequest("temperature must be a number from 0 to 1", "temperature")
    if fields.get("stream", "").strip().lower() in ("true", "1"):
        raise InvalidRequest("streaming transcriptions are not supported", "stream")
    try:
        options = JobOptions(
            model=model,
            language=fields.get("language") or None,
            initial_prompt=fields.get("prompt") or None,
            task=endpoint.task,
            word_timestamps="word" in granularities,
            speakers=response_format == "diarized_json",
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        param = {"initial_prompt": "prompt"}.get(str(first["loc"][0]), str(first["loc"][0]))
        raise InvalidRequest(f"{param}: {first['msg']}", param) from exc
    return TranscriptionRequest(
        options=options,
        response_format=cast(ResponseFormat, response_format),
        granularities=frozenset(granularities or ("segment",)),
    )


def language_name(code: str | None) -> str:
    if not code:
        return "unknown"
    return LANGUAGE_NAMES.get(code, code)


def usage(duration_s: float) -> Usage:
    return Usage(seconds=math.ceil(max(duration_s, 0.0)))


@dataclass(frozen=True)
class StoredSegment:
    index: int
    start: float
    end: float
    text: str
    avg_logprob: float | None
    no_speech_prob: float | None
    words: list[dict[str, Any]] | None


@dataclass(frozen=True)
class StoredTranscript:
    language: str | None
    duration_s: float
    text: str
    task: str
    segments: list[StoredSegment]
    turns: Turns = field(default_factory=lambda: Turns(()))
    names: Mapping[str, str | None] = field(default_factory=dict)  # label -> name given


def letters(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA: how OpenAI labels speakers without known names."""
    out = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        out = chr(ord("A") + rest) + out
    return out


def diarized(transcript: StoredTranscript) -> DiarizedTranscription:
    """The segments split where the speaker changes (mxw_shared.speakers), each with the
    speaker's name when one was given, else a letter by label; "A" where no turn says who."""
    labels = sorted(set(transcript.names) | {t.speaker for t in transcript.turns.turns})
    shown = {label: transcript.names.get(label) or letters(n) for n, label in enumerate(labels)}
    lines = [
        line
        for s in transcript.segments
        for line in attribute(s.index, s.start, s.end, s.text, s.words, transcript.turns)
    ]
    return DiarizedTranscription(
        duration=transcript.duration_s,
        text=transcript.text,
        segments=[
            DiarizedSegment(
                id=f"seg_{n}",
                start=line.start_s,
                end=line.end_s,
                text=line.text,
                speaker=shown.get(line.speaker or "", letters(0)),
            )
            for n, line in enumerate(lines)
        ],
        usage=usage(transcript.duration_s),
    )


def verbose(
    transcript: StoredTranscript, granularities: frozenset[str]
) -> VerboseTranscription | VerboseTranslation:
    words: list[Word] | None = None
    if "word" in granularities:
        words = [
            Word(word=str(w["word"]), start=float(w["start"]), end=float(w["end"]))
            for s in transcript.segments
            for w in s.words or []
        ]
    segments: list[Segment] | None = None
    if "segment" in granularities:
        segments = [
            Segment(
                id=s.index,
                start=s.start,
                end=s.end,
                text=s.text,
                avg_logprob=s.avg_logprob or 0.0,
                no_speech_prob=s.no_speech_prob or 0.0,
            )
            for s in transcript.segments
        ]
    if transcript.task == Task.translate:
        # OpenAI names the output's language here: always English.
        return VerboseTranslation(
            duration=transcript.duration_s, text=transcript.text, segments=segments
        )
    return VerboseTranscription(
        task="transcribe",
        language=language_name(transcript.language),
        duration=transcript.duration_s,
        text=transcript.text,
        segments=segments,
        words=words,
        usage=usage(transcript.duration_s),
    )


def render(
    transcript: StoredTranscript, response_format: ResponseFormat, granularities: frozenset[str]
) -> tuple[str, str]:
    """(body, media type) in OpenAI's response format."""
    if response_format == "json":
        body: Transcription | Translation = (
            Translation(text=transcript.text)
            if transcript.task == Task.translate
            else Transcription(text=transcript.text, usage=usage(transcript.duration_s))
        )
        return body.model_dump_json(exclude_none=True), "application/json"
    if response_format == "verbose_json":
        return verbose(transcript, granularities).model_dump_json(
            exclude_none=True
        ), "application/json"
    if response_format == "diarized_json":
        return diarized(transcript).model_dump_json(exclude_none=True), "application/json"
    if response_format == "srt":
        return subtitles.to_srt(transcript.segments), "application/x-subrip; charset=utf-8"
    if response_format == "vtt":
        return subtitles.to_vtt(transcript.segments), "text/vtt; charset=utf-8"
    return transcript.text.strip() + "\n", "text/plain; charset=utf-8"
