"""Admin-only endpoints: users, every job (GET /jobs?all=true), the system view, dead
letters and their replay."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from mxw_shared.contracts import NO_CONTROL_CHARACTERS
from mxw_shared.db import BIGINT_MAX
from mxw_shared.problems import PROBLEM_JSON, Problem

from mxw_gateway.admin import service
from mxw_gateway.admin.schemas import DeadLetter, ReplayResult, SystemView, UserChange, UserView
from mxw_gateway.auth import CurrentUser
from mxw_gateway.deps import CurrentUserDep, PoolDep, SettingsDep
from mxw_gateway.jobs.routes import JobListQueryDep
from mxw_gateway.jobs.schemas import JobPage


async def require_admin(user: CurrentUserDep) -> CurrentUser:
    if not user.is_admin:
        raise Problem(403, "Forbidden", "admins only")
    return user


AdminDep = Annotated[CurrentUser, Depends(require_admin)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "Not an admin.", "content": {PROBLEM_JSON: {}}},
    404: {"description": "No such thing.", "content": {PROBLEM_JSON: {}}},
}
UserId = Annotated[str, Path(min_length=1, max_length=255, pattern=NO_CONTROL_CHARACTERS)]

router = APIRouter(prefix="/admin", tags=["admin"], responses=_ERRORS)


@router.get("/users", response_model=list[UserView], summary="Every user")
async def list_users(
    admin: AdminDep,
    pool: PoolDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=BIGINT_MAX)] = 0,
) -> list[UserView]:
    return await service.list_users(pool, limit, offset)


@router.get("/users/{user_id}", response_model=UserView, summary="One user")
async def get_user(user_id: UserId, admin: AdminDep, pool: PoolDep) -> UserView:
    return await service.get_user(pool, user_id)


@router.patch("/users/{user_id}", response_model=UserView, summary="Change role, or disable")
async def change_user(
    user_id: UserId, change: UserChange, admin: AdminDep, pool: PoolDep
) -> UserView:
    return await service.change_user(pool, admin, user_id, change)


@router.get("/jobs", response_model=JobPage, summary="Every user's jobs, newest first")
async def list_jobs(
    admin: AdminDep, settings: SettingsDep, pool: PoolDep, query: JobListQueryDep
) -> JobPage:
    """The same list, filters and paging as GET /jobs?all=true."""
    return await query.page(pool, settings, admin, all_users=True)


@router.get("/system", response_model=SystemView, summary="Jobs per state, consumer lag, DLQs")
async def system(admin: AdminDep, pool: PoolDep, settings: SettingsDep) -> SystemView:
    return await service.system_view(pool, settings)


@router.get("/dead-letters", response_model=list[DeadLetter], summary="Dead-lettered events")
async def dead_letters(
    admin: AdminDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetter]:
    return await service.dead_letters(settings, limit)


@router.post(
    "/dead-letters/{dead_letter_id}/replay",
    response_model=ReplayResult,
    summary="Reprocess the failed job, or publish the event again",
)
async def replay(
    dead_letter_id: Annotated[str, Path(max_length=300, pattern=NO_CONTROL_CHARACTERS)],
    admin: AdminDep,
    pool: PoolDep,
    settings: SettingsDep,
) -> ReplayResult:
    return await service.replay(pool, settings, admin, dead_letter_id)
