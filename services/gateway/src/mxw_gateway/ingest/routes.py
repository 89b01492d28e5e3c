"""POST /jobs/from-url: a job from audio the gateway downloads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from mxw_shared.problems import PROBLEM_JSON

from mxw_gateway.deps import BlobStoreDep, CurrentUserDep, PoolDep, SettingsDep
from mxw_gateway.hygiene import RateLimitUploads
from mxw_gateway.ingest import service
from mxw_gateway.ingest.schemas import FromUrlRequest
from mxw_gateway.jobs.schemas import JobView

router = APIRouter(tags=["jobs"])


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {}}}


@router.post(
    "/jobs/from-url",
    status_code=202,
    response_model=JobView,
    responses={
        200: {"model": JobView, "description": "Same audio as an existing job of yours."},
        202: {"model": JobView, "description": "Downloaded and queued for transcription."},
        400: _problem("Not an http(s) URL."),
        401: _problem("Missing or invalid bearer token."),
        403: _problem(
            "The URL's host is private, loopback or otherwise not public; or the account "
            "is disabled."
        ),
        413: _problem("The download is larger than the limit."),
        415: _problem("The download is not decodable audio."),
        422: _problem("Invalid request body or options."),
        429: _problem("Upload rate limit reached (Retry-After)."),
        502: _problem("The server failed, answered an error or redirected too often."),
        504: _problem("The download did not finish within the time limit."),
    },
    summary="Start a job from audio at an http(s) URL",
    operation_id="create_job_from_url",
    dependencies=[RateLimitUploads],
)
async def create_job_from_url(
    request: FromUrlRequest,
    user: CurrentUserDep,
    settings: SettingsDep,
    pool: PoolDep,
    store: BlobStoreDep,
) -> JSONResponse:
    result = await service.ingest(request, user=user, settings=settings, pool=pool, store=store)
    headers = {"Location": result.job.links.job}
    if not result.created:
        headers["X-MxW-Duplicate-Of"] = str(result.job.id)
    return JSONResponse(
        result.job.model_dump(mode="json"),
        status_code=202 if result.created else 200,
        headers=headers,
    )
