"""OpenAI-compatible routes: POST /v1/audio/transcriptions, POST /v1/audio/translations and
GET /v1/models, so tools that speak OpenAI's audio API (the official clients among them) use
the pipeline unchanged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from mxw_shared.contracts import Task
from mxw_shared.problems import PROBLEM_JSON

from mxw_gateway.deps import BlobStoreDep, CurrentUserDep, PoolDep, SettingsDep
from mxw_gateway.hygiene import RateLimitUploads
from mxw_gateway.jobs.views import get_job_view
from mxw_gateway.openai_api import service
from mxw_gateway.openai_api.domain import (
    DIARIZE_MODEL,
    OPENAI_MODEL,
    TRANSCRIPTIONS,
    TRANSLATIONS,
    Endpoint,
    render,
)
from mxw_gateway.openai_api.schemas import (
    DiarizedTranscription,
    ModelCard,
    ModelList,
    PendingTranscription,
    Transcription,
    Translation,
    VerboseTranscription,
    VerboseTranslation,
)

router = APIRouter(prefix="/v1", tags=["openai"])


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {}}}


_AUTH: dict[int | str, dict[str, Any]] = {
    401: _error("Missing or invalid bearer token."),
    403: _error("The account is disabled."),
}

_FIELDS: dict[str, dict[str, Any]] = {
    "file": {"type": "string", "format": "binary"},
    "model": {
        "type": "string",
        "description": f"{OPENAI_MODEL} (the default model), "
        f"{DIARIZE_MODEL} (the same) or a model of GET /v1/models.",
        "example": OPENAI_MODEL,
    },
    "language": {"type": "string", "example": "en"},
    "prompt": {"type": "string"},
    "response_format": {"type": "string"},
    "timestamp_granularities[]": {
        "type": "array",
        "items": {"type": "string", "enum": ["word", "segment"]},
    },
    "temperature": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "description": "Accepted and ignored: the transcriber decodes "
        "with its own temperature fallback schedule.",
    },
}
_FORMAT_NOTES = {
    Task.transcribe: "diarized_json also finds who spoke when (the job asks for speakers) "
    "and waits for it.",
    Task.translate: "verbose_json gives language english (the output's) and segments.",
}


def _body(endpoint: Endpoint) -> dict[str, Any]:
    """The multipart form `endpoint` takes, for the OpenAPI document."""
    taken = {"file", *endpoint.fields, *endpoint.lists}
    properties = {name: spec for name, spec in _FIELDS.items() if name in taken}
    properties["response_format"] = {
        "type": "string",
        "enum": list(endpoint.formats),
        "description": _FORMAT_NOTES[endpoint.task],
    }
    schema = {"type": "object", "required": ["file", "model"], "properties": properties}
    content = {"multipart/form-data": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def _responses(what: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": f"The {what} in the requested response_format.",
            "content": {
                "text/plain": {},
                "application/x-subrip": {},
                "text/vtt": {},
            },
        },
        202: {
            "model": PendingTranscription,
            "description": "Not done within the wait: poll the job (Location).",
        },
        **_AUTH,
        400: _error("Invalid field, unknown model or a file that is not audio."),
        409: _error("The job was cancelled."),
        413: _error("The file is larger than the upload limit."),
        415: _error("Not multipart/form-data."),
        422: _error("The job failed on this audio or these options (the reason is given)."),
        429: _error("Upload rate limit reached (Retry-After)."),
        502: _error("The job failed after every retry."),
    }


def _audio_route(endpoint: Endpoint, path: str, what: str, **route: Any) -> None:
    """Register one of the audio routes: the same handler, form reader, limits and answers,
    with `endpoint`'s task, fields and formats."""

    async def create(
        request: Request,
        user: CurrentUserDep,
        settings: SettingsDep,
        pool: PoolDep,
        store: BlobStoreDep,
    ) -> Response:
        """A job of the caller's with the route's task, the wait for its transcript, and the
        answer in the requested format (202: not yet)."""
        slots: service.WaitSlots = request.app.state.openai_waits
        # Taken before the upload, so a user's concurrent requests count from their start.
        with slots.take(user.sub) as may_wait:
            submitted = await service.submit(
                body=request.stream(),
                content_type=request.headers.get("content-type"),
                user=user,
                settings=settings,
                pool=pool,
                store=store,
                endpoint=endpoint,
            )
            if may_wait:
                view, transcript = await service.wait_for_transcript(
                    pool, settings, user, submitted.job_id
                )
            else:  # this user already has requests waiting: answer at once with the job
                view = await get_job_view(pool, settings, user, submitted.job_id)
                transcript = None
        if transcript is None:
            pending = PendingTranscription(
                job_id=view.id,
                state=view.state.value,
                job=view.links.job,
                transcript=view.links.transcript,
            )
            return JSONResponse(
                pending.model_dump(mode="json"),
                status_code=202,
                headers={"Location": view.links.job, "Retry-After": "5"},
            )
        body, media_type = render(
            transcript, submitted.request.response_format, submitted.request.granularities
        )
        return Response(body, media_type=media_type, headers={"X-MxW-Job-Id": str(view.id)})

    router.post(
        path,
        openapi_extra=_body(endpoint),
        responses=_responses(what),
        dependencies=[RateLimitUploads],
        **route,
    )(create)


_WAIT = (
    "Runs through the same pipeline as POST /jobs and waits for the transcript (at most the "
    "gateway's openai_wait_s; at once with 202 when the caller already has "
    "openai_max_waits_per_user requests waiting)."
)

_audio_route(
    TRANSCRIPTIONS,
    "/audio/transcriptions",
    "transcript",
    response_model=Transcription | VerboseTranscription | DiarizedTranscription,
    summary="Transcribe audio (OpenAI-compatible)",
    description=f"{_WAIT} `temperature` and `chunking_strategy` are "
    "accepted and ignored; `known_speaker_names[]` is refused (speakers are named afterwards: "
    "PATCH /jobs/{id}/speakers/{label}).",
    operation_id="create_transcription",
)
_audio_route(
    TRANSLATIONS,
    "/audio/translations",
    "English translation",
    response_model=Translation | VerboseTranslation,
    summary="Translate audio into English (OpenAI-compatible)",
    description=f"{_WAIT} The job asks for task translate: Whisper's translation into "
    "English, which only multilingual models do (a model named *.en is refused with 400). "
    "`temperature` is accepted and ignored.",
    operation_id="create_translation",
)


def _models(settings: SettingsDep) -> list[ModelCard]:
    return [ModelCard(id=name) for name in (OPENAI_MODEL, DIARIZE_MODEL, *settings.openai_models)]


@router.get(
    "/models", response_model=ModelList, responses=_AUTH, summary="Models (OpenAI-compatible)"
)
async def list_models(user: CurrentUserDep, settings: SettingsDep) -> ModelList:
    return ModelList(data=_models(settings))


@router.get(
    "/models/{model}",
    response_model=ModelCard,
    responses={**_AUTH, 404: _error("No such model.")},
    summary="One model (OpenAI-compatible)",
)
async def get_model(model: str, user: CurrentUserDep, settings: SettingsDep) -> ModelCard:
    for card in _models(settings):
        if card.id == model:
            return card
    raise service.openai_error(
        404,
        f"the model {model!r} does not exist",
        param="model",
        code="model_not_found",
        title="Not found",
    )
