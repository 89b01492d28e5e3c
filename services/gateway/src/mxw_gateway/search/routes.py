"""HTTP routes of search: GET with query parameters, POST with a JSON body, and "more like
this" from a chunk."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query
from mxw_shared.contracts import NO_CONTROL_CHARACTERS
from mxw_shared.db import BIGINT_MAX
from mxw_shared.problems import PROBLEM_JSON

from mxw_gateway.deps import CurrentUserDep, EmbedderClientDep, PoolDep, SettingsDep
from mxw_gateway.search import service
from mxw_gateway.search.repository import SearchMode
from mxw_gateway.search.schemas import (
    MAX_OFFSET,
    SearchFilters,
    SearchRequest,
    SearchResults,
    SimilarRequest,
)

router = APIRouter(tags=["search"])

_RESPONSES: dict[int | str, dict[str, object]] = {
    404: {"description": "No such voice profile (or not yours).", "content": {PROBLEM_JSON: {}}},
    503: {"description": "The embedding service is down.", "content": {PROBLEM_JSON: {}}},
}


@router.get("/search", response_model=SearchResults, responses=_RESPONSES)
async def search_get(
    user: CurrentUserDep,
    settings: SettingsDep,
    pool: PoolDep,
    client: EmbedderClientDep,
    q: Annotated[str, Query(min_length=1, max_length=1000, pattern=NO_CONTROL_CHARACTERS)],
    mode: SearchMode = SearchMode.hybrid,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    all: Annotated[bool, Query(description="Admins only: every user's audio.")] = False,
    job_id: Annotated[list[uuid.UUID] | None, Query(description="Repeatable.")] = None,
    language: Annotated[str | None, Query(max_length=16, pattern=NO_CONTROL_CHARACTERS)] = None,
    created_from: dt.datetime | None = None,
    created_to: dt.datetime | None = None,
    speaker: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=255,
            pattern=NO_CONTROL_CHARACTERS,
            description="Only what the speaker with this name said (names given per job).",
        ),
    ] = None,
    voice: Annotated[
        uuid.UUID | None,
        Query(description="Only what this voice profile of yours said (GET /voices)."),
    ] = None,
) -> SearchResults:
    return await service.search(
        pool=pool,
        client=client,
        settings=settings,
        user=user,
        q=q,
        mode=mode,
        limit=limit,
        offset=offset,
        filters=SearchFilters(
            all=all,
            job_ids=job_id or [],
            language=language,
            created_from=created_from,
            created_to=created_to,
            speaker=speaker,
            voice=voice,
        ),
    )


@router.post("/search", response_model=SearchResults, responses=_RESPONSES)
async def search_post(
    body: SearchRequest,
    user: CurrentUserDep,
    settings: SettingsDep,
    pool: PoolDep,
    client: EmbedderClientDep,
) -> SearchResults:
    return await service.search(
        pool=pool,
        client=client,
        settings=settings,
        user=user,
        q=body.q,
        mode=body.mode,
        limit=body.limit,
        offset=body.offset,
        filters=body,
        job_id=body.job_id,
    )


@router.get("/search/similar/{chunk_id}", response_model=SearchResults)
async def similar_get(
    chunk_id: Annotated[int, Path(ge=1, le=BIGINT_MAX)],
    user: CurrentUserDep,
    settings: SettingsDep,
    pool: PoolDep,
    client: EmbedderClientDep,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    all: Annotated[bool, Query(description="Admins only: every user's audio.")] = False,
    job_id: Annotated[list[uuid.UUID] | None, Query(description="Repeatable.")] = None,
) -> SearchResults:
    """More like this: the chunks closest in meaning to one of the caller's chunks."""
    return await service.similar(
        pool=pool,
        client=client,
        settings=settings,
        user=user,
        chunk_id=chunk_id,
        limit=limit,
        offset=offset,
        filters=SimilarRequest(all=all, job_ids=job_id or []),
    )
