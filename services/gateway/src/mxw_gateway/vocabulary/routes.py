"""/vocabulary: your custom vocabulary (hotwords), read, replaced, one term added or removed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from mxw_shared.problems import PROBLEM_JSON

from mxw_gateway.deps import CurrentUserDep, PoolDep
from mxw_gateway.vocabulary import service
from mxw_gateway.vocabulary.schemas import TermAdd, Vocabulary, VocabularyUpdate

router = APIRouter(tags=["vocabulary"])


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {}}}


_INVALID: dict[int | str, dict[str, Any]] = {
    422: _problem(
        "A term empty, too long, with a comma or a control character, or the list beyond its "
        "limits (the reason and the limits are given)."
    )
}


@router.get(
    "/vocabulary",
    response_model=Vocabulary,
    summary="Your custom vocabulary: names and terms every job of yours expects",
)
async def get_vocabulary(user: CurrentUserDep, pool: PoolDep) -> Vocabulary:
    return await service.get(pool, user)


@router.put(
    "/vocabulary",
    response_model=Vocabulary,
    responses=_INVALID,
    summary="Replace your custom vocabulary (normalised: trimmed, duplicates dropped)",
)
async def put_vocabulary(body: VocabularyUpdate, user: CurrentUserDep, pool: PoolDep) -> Vocabulary:
    return await service.replace(pool, user, body.terms)


@router.post(
    "/vocabulary/terms",
    response_model=Vocabulary,
    responses=_INVALID,
    summary="Add one term to your custom vocabulary (at its end)",
)
async def add_term(body: TermAdd, user: CurrentUserDep, pool: PoolDep) -> Vocabulary:
    return await service.add(pool, user, body.term)


@router.delete(
    # A path: a term may hold a slash (TCP/IP), which the client percent-encodes or not.
    "/vocabulary/terms/{term:path}",
    response_model=Vocabulary,
    responses={404: _problem("The term is not in your vocabulary.")},
    summary="Remove one term from your custom vocabulary (case-insensitive)",
)
async def remove_term(
    term: Annotated[str, Path(max_length=240)], user: CurrentUserDep, pool: PoolDep
) -> Vocabulary:
    return await service.remove(pool, user, term)
