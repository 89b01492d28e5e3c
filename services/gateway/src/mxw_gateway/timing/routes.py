"""GET /jobs/{job_id}/timing (the owner, or an admin) and GET /admin/timing (admins)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from mxw_shared.problems import PROBLEM_JSON

from mxw_gateway.admin.routes import AdminDep
from mxw_gateway.deps import CurrentUserDep, PoolDep
from mxw_gateway.timing import service
from mxw_gateway.timing.schemas import JobTiming, TimingReport

router = APIRouter(tags=["timing"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such job (or not yours).", "content": {PROBLEM_JSON: {}}}
}
_ADMIN: dict[int | str, dict[str, Any]] = {
    403: {"description": "Not an admin.", "content": {PROBLEM_JSON: {}}}
}


@router.get(
    "/jobs/{job_id}/timing",
    response_model=JobTiming,
    responses=_NOT_FOUND,
    summary="When each stage of a job was queued, started and finished",
)
async def job_timing(job_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep) -> JobTiming:
    return await service.job_timing(pool, user, job_id)


@router.get(
    "/admin/timing",
    response_model=TimingReport,
    responses=_ADMIN,
    summary="Queue wait, run time and end-to-end percentiles per stage over a window",
)
async def timing_report(
    admin: AdminDep,
    pool: PoolDep,
    window_s: Annotated[
        int, Query(ge=60, le=90 * 86400, description="Look-back window in seconds.")
    ] = 86400,
) -> TimingReport:
    return await service.timing_report(pool, window_s)
