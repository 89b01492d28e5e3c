"""HTTP routes of search: GET with query parameters, POST with a JSON body."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from mxw_shared.problems import PROBLEM_JSON

from mxw_gateway.deps import CurrentUserDep, EmbedderClientDep, PoolDep, SettingsDep
from mxw_gateway.search import service
from mxw_gateway.search.schemas import SearchRequest, SearchResults

router = APIRouter(tags=["search"])

_RESPONSES: dict[int | str, dict[str, object]] = {
    503: {"description": "The embedding service is down.", "content": {PROBLEM_JSON: {}}},
}


@router.get("/search", response_model=SearchResults, responses=_RESPONSES)
async def search_get(
    user: CurrentUserDep,
    settings: SettingsDep,
    pool: PoolDep,
    client: EmbedderClientDep,
    q: Annotated[str, Query(min_length=1, max_length=1000)],
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    all: Annotated[bool, Query(description="Admins only: every user's audio.")] = False,
    job_id: uuid.UUID | None = None,
) -> SearchResults:
    return await service.search(
        pool=pool,
        client=client,
        settings=settings,
        user=user,
        q=q,
        limit=limit,
        all_users=all,
        job_id=job_id,
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
        limit=body.limit,
        all_users=body.all,
        job_id=body.job_id,
    )
