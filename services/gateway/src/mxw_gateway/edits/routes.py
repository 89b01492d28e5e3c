"""Correcting a transcript: a segment's text or times, split, merge, the history, revert.
Every edit is conditional (If-Match: the ETag of GET /jobs/{id}/transcript) and answers the
transcript after it with its new ETag."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Response
from mxw_shared.contracts import EditOperation
from mxw_shared.problems import PROBLEM_JSON

from mxw_gateway.deps import CurrentUserDep, PoolDep, SettingsDep
from mxw_gateway.edits import domain, service
from mxw_gateway.edits.schemas import (
    RevertRequest,
    RevisionList,
    SegmentEdit,
    SegmentMerge,
    SegmentSplit,
)
from mxw_gateway.jobs.schemas import TranscriptView
from mxw_gateway.jobs.views import TaggedTranscript

router = APIRouter(tags=["transcript editing"])

SegmentIndex = Annotated[int, Path(ge=0, le=10_000_000)]
IfMatch = Annotated[
    str | None,
    Header(
        description="The ETag of the transcript being edited (GET /jobs/{id}/transcript).",
        max_length=1000,
    ),
]


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {}}}


_EDIT: dict[int | str, dict[str, Any]] = {
    403: _problem("An admin may read another user's transcript, not edit it."),
    404: _problem("No such job (or not yours)."),
    409: _problem("Not transcribed yet, or the job was cancelled."),
    412: _problem("The transcript changed since the ETag sent (its current one is given)."),
    422: _problem("The edit is not possible: the reason is given. Nothing changed."),
    428: _problem("No If-Match header."),
}


def _tagged(tagged: TaggedTranscript, response: Response) -> TranscriptView:
    response.headers["ETag"] = tagged.etag
    return tagged.view


@router.patch(
    "/jobs/{job_id}/segments/{index}",
    response_model=TranscriptView,
    responses=_EDIT,
    summary="Correct a segment's text and/or move its start and end",
)
async def edit_segment(
    job_id: uuid.UUID,
    index: SegmentIndex,
    body: SegmentEdit,
    response: Response,
    user: CurrentUserDep,
    pool: PoolDep,
    settings: SettingsDep,
    if_match: IfMatch = None,
) -> TranscriptView:
    def apply(segments: list[domain.Segment], duration_s: float) -> list[domain.Segment]:
        if body.text is not None:
            segments = domain.edit_text(segments, index, body.text)
        if body.start is not None or body.end is not None:
            segments = domain.set_times(segments, index, body.start, body.end, duration_s)
        return segments

    operation = EditOperation.text if body.text is not None else EditOperation.times
    tagged = await service.edit(pool, settings, user, job_id, if_match, operation, apply)
    return _tagged(tagged, response)


@router.post(
    "/jobs/{job_id}/segments/{index}/split",
    response_model=TranscriptView,
    responses=_EDIT,
    summary="Split a segment in two at a character of its text",
)
async def split_segment(
    job_id: uuid.UUID,
    index: SegmentIndex,
    body: SegmentSplit,
    response: Response,
    user: CurrentUserDep,
    pool: PoolDep,
    settings: SettingsDep,
    if_match: IfMatch = None,
) -> TranscriptView:
    def apply(segments: list[domain.Segment], _duration_s: float) -> list[domain.Segment]:
        return domain.split(segments, index, body.offset, body.at)

    tagged = await service.edit(
        pool, settings, user, job_id, if_match, EditOperation.split_segment, apply
    )
    return _tagged(tagged, response)


@router.post(
    "/jobs/{job_id}/segments/{index}/merge",
    response_model=TranscriptView,
    responses=_EDIT,
    summary="Merge a segment with the next one",
)
async def merge_segments(
    job_id: uuid.UUID,
    index: SegmentIndex,
    body: SegmentMerge,
    response: Response,
    user: CurrentUserDep,
    pool: PoolDep,
    settings: SettingsDep,
    if_match: IfMatch = None,
) -> TranscriptView:
    def apply(segments: list[domain.Segment], _duration_s: float) -> list[domain.Segment]:
        return domain.merge(segments, index)

    tagged = await service.edit(pool, settings, user, job_id, if_match, EditOperation.merge, apply)
    return _tagged(tagged, response)


@router.get(
    "/jobs/{job_id}/transcript/revisions",
    response_model=RevisionList,
    responses={404: _problem("No such job (or not yours).")},
    summary="The transcript's history: who changed what, when",
)
async def list_revisions(job_id: uuid.UUID, user: CurrentUserDep, pool: PoolDep) -> RevisionList:
    return await service.revisions(pool, user, job_id)


@router.get(
    "/jobs/{job_id}/transcript/revisions/{revision}",
    response_model=TranscriptView,
    responses={404: _problem("No such job (or not yours), or no such revision.")},
    summary="The transcript as it was at a revision (0: as transcribed)",
)
async def get_revision(
    job_id: uuid.UUID,
    revision: Annotated[int, Path(ge=0, le=10_000_000)],
    user: CurrentUserDep,
    pool: PoolDep,
) -> TranscriptView:
    return (await service.transcript_at(pool, user, job_id, revision)).view


@router.post(
    "/jobs/{job_id}/transcript/revert",
    response_model=TranscriptView,
    responses=_EDIT,
    summary="Go back to an earlier revision (recorded as a new revision)",
)
async def revert_transcript(
    job_id: uuid.UUID,
    body: RevertRequest,
    response: Response,
    user: CurrentUserDep,
    pool: PoolDep,
    settings: SettingsDep,
    if_match: IfMatch = None,
) -> TranscriptView:
    tagged = await service.revert(pool, settings, user, job_id, if_match, body.revision)
    return _tagged(tagged, response)
