"""Admin-only views: the users the gateway has seen."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from mxw_shared.problems import Problem
from pydantic import BaseModel

from mxw_gateway.deps import CurrentUserDep, PoolDep

router = APIRouter(prefix="/admin", tags=["admin"])


class UserView(BaseModel):
    id: str
    name: str | None
    email: str | None
    role: str
    disabled: bool
    created_at: datetime
    last_seen_at: datetime
    job_count: int


@router.get("/users", response_model=list[UserView], summary="Every user (admins only)")
async def list_users(
    user: CurrentUserDep,
    pool: PoolDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[UserView]:
    if not user.is_admin:
        raise Problem(403, "Forbidden", "admins only")
    rows = await pool.fetch(
        """SELECT u.id, u.name, u.email, u.role, u.disabled, u.created_at, u.last_seen_at,
                  (SELECT count(*) FROM jobs j WHERE j.owner_id = u.id) AS job_count
           FROM users u ORDER BY u.created_at, u.id LIMIT $1 OFFSET $2""",
        limit,
        offset,
    )
    return [UserView(**dict(r)) for r in rows]
