"""Custom vocabulary (hotwords): the names and terms a user's recordings hold (people,
places, products, jargon), which the transcriber is told to expect so that it spells them
right. A user keeps one list (GET/PUT /vocabulary, POST /vocabulary/terms, DELETE
/vocabulary/terms/{term}); a job may add its own (the `hotwords` option). When a job is
created the two are merged, the job's first, by the one rule (normalize_hotwords) and within
its bounds, and the job's options hold the effective list: the event and the job's view say
what the transcriber was told. A job created with use_vocabulary=false gets only its own.

Vocabularies are their owner's only: every call is scoped by the caller (admins included)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from mxw_shared.contracts import (
    MAX_HOTWORD_CHARS,
    MAX_HOTWORDS,
    MAX_HOTWORDS_TOTAL_CHARS,
    JobOptions,
    normalize_hotwords,
)
from mxw_shared.db import Pool
from mxw_shared.problems import Problem

from mxw_gateway.auth import CurrentUser
from mxw_gateway.vocabulary import repository
from mxw_gateway.vocabulary.schemas import Vocabulary

LIMITS: dict[str, Any] = {
    "max_terms": MAX_HOTWORDS,
    "max_term_chars": MAX_HOTWORD_CHARS,
    "max_total_chars": MAX_HOTWORDS_TOTAL_CHARS,
}


def _view(terms: tuple[str, ...], updated_at: datetime | None) -> Vocabulary:
    return Vocabulary(terms=list(terms), updated_at=updated_at)


def _normalized(terms: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    try:
        return normalize_hotwords(terms)
    except ValueError as exc:
        raise Problem(422, "Invalid vocabulary", str(exc), limits=LIMITS) from exc


async def get(pool: Pool, user: CurrentUser) -> Vocabulary:
    return _view(*await repository.fetch_terms(pool, user.sub))


async def replace(pool: Pool, user: CurrentUser, terms: list[str]) -> Vocabulary:
    kept = _normalized(terms)
    return _view(kept, await repository.store_terms(pool, user.sub, kept))


async def add(pool: Pool, user: CurrentUser, term: str) -> Vocabulary:
    """The term appended (a term already there, in any case, stays where it is)."""
    async with pool.acquire() as conn, conn.transaction():
        terms, _ = await repository.fetch_terms(conn, user.sub, for_update=True)
        kept = _normalized((*terms, term))
        return _view(kept, await repository.store_terms(conn, user.sub, kept))


async def remove(pool: Pool, user: CurrentUser, term: str) -> Vocabulary:
    """The term gone (matched as the rule compares terms: trimmed, case-insensitive)."""
    wanted = " ".join(term.split()).casefold()
    async with pool.acquire() as conn, conn.transaction():
        terms, _ = await repository.fetch_terms(conn, user.sub, for_update=True)
        kept = tuple(t for t in terms if t.casefold() != wanted)
        if len(kept) == len(terms):
            raise Problem(404, "Not found", f"{term!r} is not in your vocabulary")
        return _view(kept, await repository.store_terms(conn, user.sub, kept))


def merge(job_terms: tuple[str, ...], user_terms: tuple[str, ...]) -> tuple[str, ...]:
    """The job's hotwords, then the user's vocabulary: one list by the one rule; a 422
    problem naming the limit when together they exceed it (nothing is created then)."""
    try:
        return normalize_hotwords((*job_terms, *user_terms))
    except ValueError as exc:
        raise Problem(
            422,
            "Too many hotwords",
            f"this job's hotwords and your vocabulary together exceed a limit: {exc}; "
            "send fewer hotwords, shorten your vocabulary (PUT /vocabulary), or leave it out "
            "of this job with use_vocabulary=false",
            limits=LIMITS,
            job_hotwords=len(job_terms),
            vocabulary_terms=len(user_terms),
        ) from exc


@dataclasses.dataclass(frozen=True)
class UserTerms:
    """A user's vocabulary as read for one job, `use` false when the job opts out."""

    terms: tuple[str, ...]
    use: bool = True

    def apply(self, options: JobOptions) -> JobOptions:
        if not self.use or not self.terms:
            return options
        return options.model_copy(update={"hotwords": merge(options.hotwords, self.terms)})


async def user_terms(pool: Pool, user: CurrentUser, use: bool = True) -> UserTerms:
    if not use:
        return UserTerms((), use=False)
    terms, _ = await repository.fetch_terms(pool, user.sub)
    return UserTerms(terms)


async def effective_options(
    pool: Pool, user: CurrentUser, options: JobOptions, *, use_vocabulary: bool = True
) -> JobOptions:
    """A new job's options with the caller's vocabulary merged into its hotwords (unless
    `use_vocabulary` is false): what the job stores and AudioUploaded carries."""
    return (await user_terms(pool, user, use_vocabulary)).apply(options)
