"""/voices: name a voice from a job's speaker, list, rename and delete your voice profiles;
/jobs/{id}/speakers/{label}/voice: confirm or turn down a profile for a speaker."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from mxw_shared.problems import PROBLEM_JSON

from mxw_gateway.deps import CurrentUserDep, PoolDep, SettingsDep
from mxw_gateway.jobs.schemas import SPEAKER_LABEL, SpeakerList
from mxw_gateway.voices import service
from mxw_gateway.voices.schemas import Voice, VoiceCreate, VoiceDecision, VoicePage, VoiceRename

router = APIRouter(tags=["voices"])


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {}}}


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _problem("No such profile (or not yours).")}
_SPEAKER: dict[int | str, dict[str, Any]] = {
    404: _problem("No such job (or not yours), speaker or profile (or not yours)."),
    409: _problem(
        "The job did not ask for speakers, they are still being found, or the speaker has "
        "no voice embedding; or (POST /voices) you already have a profile of that name."
    ),
    422: _problem("Invalid name, label or id."),
}


@router.post(
    "/voices",
    status_code=201,
    response_model=Voice,
    responses=_SPEAKER,
    summary="Name a voice: a profile from one of your jobs' speakers",
)
async def create_voice(
    body: VoiceCreate, response: Response, user: CurrentUserDep, pool: PoolDep
) -> Voice:
    created = await service.create(pool, user, body)
    response.headers["Location"] = f"/voices/{created.id}"
    return created


@router.get("/voices", response_model=VoicePage, summary="Your voice profiles, newest first")
async def list_voices(
    user: CurrentUserDep,
    pool: PoolDep,
    settings: SettingsDep,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> VoicePage:
    return await service.list_page(pool, settings, user, limit, cursor)


@router.get("/voices/{profile_id}", response_model=Voice, responses=_NOT_FOUND)
async def get_voice(profile_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep) -> Voice:
    return await service.get(pool, user, profile_id)


@router.patch(
    "/voices/{profile_id}",
    response_model=Voice,
    responses={**_NOT_FOUND, 409: _problem("You already have a profile of that name.")},
    summary="Rename a profile (and the job speakers confirmed as it)",
)
async def rename_voice(
    profile_id: uuid.UUID, body: VoiceRename, user: CurrentUserDep, pool: PoolDep
) -> Voice:
    return await service.rename(pool, user, profile_id, body.name)


@router.delete(
    "/voices/{profile_id}",
    status_code=204,
    responses=_NOT_FOUND,
    summary="Delete a profile and every voice sample of it (job speakers keep their names)",
)
async def delete_voice(profile_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep) -> Response:
    await service.delete(pool, user, profile_id)
    return Response(status_code=204)


@router.post(
    "/jobs/{job_id}/speakers/{label}/voice",
    response_model=SpeakerList,
    responses=_SPEAKER,
    summary="Confirm (accept) or turn down a voice profile for a speaker",
)
async def decide_voice(
    job_id: uuid.UUID,
    label: Annotated[str, Path(pattern=SPEAKER_LABEL)],
    body: VoiceDecision,
    user: CurrentUserDep,
    pool: PoolDep,
) -> SpeakerList:
    return await service.decide(pool, user, job_id, label, body)
