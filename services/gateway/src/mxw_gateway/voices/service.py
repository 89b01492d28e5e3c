"""Voice profiles: a voice named once (POST /voices from a job's speaker), suggested for the
speakers of later recordings whose voice is close (GET /jobs/{id}/speakers), confirmed or
turned down by the user (POST /jobs/{id}/speakers/{label}/voice); a confirmation adds the
speaker's voice to the profile, so that its centroid follows every recording it is heard in.

Profiles are their owner's only: every call is scoped by the caller, another user's profile
or job is "not found" (admins included: a voice is personal data, not a job to inspect)."""

from __future__ import annotations

import uuid

import asyncpg
from mxw_shared.db import Connection, Pool
from mxw_shared.problems import Problem

from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs import repository as jobs_repository
from mxw_gateway.jobs.domain import decode_cursor, encode_cursor
from mxw_gateway.jobs.schemas import SpeakerList
from mxw_gateway.jobs.speakers import list_speakers, load_diarized_job
from mxw_gateway.jobs.views import job_not_found
from mxw_gateway.settings import GatewaySettings
from mxw_gateway.voices import repository
from mxw_gateway.voices.schemas import Voice, VoiceCreate, VoiceDecision, VoicePage


def _voice(row: asyncpg.Record) -> Voice:
    return Voice(
        id=row["id"],
        name=row["name"],
        samples=row["samples"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def profile_not_found(profile_id: uuid.UUID) -> Problem:
    return Problem(404, "Not found", f"no voice profile {profile_id}")


def _name_taken(name: str) -> Problem:
    return Problem(
        409,
        "Name taken",
        f"you already have a voice profile named {name!r}: rename one, or add this speaker to "
        "it with POST /jobs/{job_id}/speakers/{label}/voice",
    )


async def _own_speaker(
    pool: Pool, user: CurrentUser, job_id: uuid.UUID, label: str
) -> asyncpg.Record:
    """The caller's own job's speaker, found by the diarizer and with a voice."""
    job = await jobs_repository.fetch_job(pool, job_id)
    if job is None or job["owner_id"] != user.sub:
        raise job_not_found(job_id)
    await load_diarized_job(pool, user, job_id)
    speaker = await repository.fetch_speaker(pool, job_id, label)
    if speaker is None:
        raise Problem(404, "Not found", f"no speaker {label} in this job")
    if not speaker["has_voice"]:
        raise Problem(
            409, "No voice", f"speaker {label} has no voice embedding (e.g. added by a correction)"
        )
    return speaker


async def _profile(conn: Connection | Pool, user: CurrentUser, profile_id: uuid.UUID) -> Voice:
    row = await repository.fetch_profile(conn, user.sub, profile_id)
    if row is None:
        raise profile_not_found(profile_id)
    return _voice(row)


async def create(pool: Pool, user: CurrentUser, body: VoiceCreate) -> Voice:
    await _own_speaker(pool, user, body.job_id, body.label)
    async with pool.acquire() as conn, conn.transaction():
        await jobs_repository.lock_job(conn, body.job_id)
        profile_id = await repository.insert_profile(conn, user.sub, body.name)
        if profile_id is None:
            raise _name_taken(body.name)
        await repository.link_speaker(conn, profile_id, body.job_id, body.label)
        return await _profile(conn, user, profile_id)


async def list_page(
    pool: Pool, settings: GatewaySettings, user: CurrentUser, limit: int | None, cursor: str | None
) -> VoicePage:
    size = min(limit or settings.jobs_default_page_size, settings.jobs_max_page_size)
    after = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ValueError as exc:
            raise Problem(422, "Invalid request", "invalid cursor") from exc
    rows = await repository.list_profiles(pool, user.sub, size + 1, after)
    page = rows[:size]
    next_cursor = (
        encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > size else None
    )
    return VoicePage(items=[_voice(r) for r in page], next_cursor=next_cursor)


async def get(pool: Pool, user: CurrentUser, profile_id: uuid.UUID) -> Voice:
    return await _profile(pool, user, profile_id)


async def rename(pool: Pool, user: CurrentUser, profile_id: uuid.UUID, name: str) -> Voice:
    async with pool.acquire() as conn, conn.transaction():
        try:
            renamed = await repository.rename_profile(conn, user.sub, profile_id, name)
        except asyncpg.UniqueViolationError as exc:  # a concurrent rename to the same name
            raise _name_taken(name) from exc
        if renamed is None:
            raise profile_not_found(profile_id)
        if not renamed:
            raise _name_taken(name)
        return await _profile(conn, user, profile_id)


async def delete(pool: Pool, user: CurrentUser, profile_id: uuid.UUID) -> None:
    if not await repository.delete_profile(pool, user.sub, profile_id):
        raise profile_not_found(profile_id)


async def decide(
    pool: Pool, user: CurrentUser, job_id: uuid.UUID, label: str, body: VoiceDecision
) -> SpeakerList:
    """Accept: the speaker is the profile's voice (name, link, a new sample). Reject: it is
    not (no longer suggested; unlinked if it was linked to it)."""
    await _own_speaker(pool, user, job_id, label)
    async with pool.acquire() as conn, conn.transaction():
        await jobs_repository.lock_job(conn, job_id)
        await _profile(conn, user, body.profile_id)
        if body.accept:
            await repository.link_speaker(conn, body.profile_id, job_id, label)
        else:
            await repository.reject(conn, body.profile_id, job_id, label)
    return await list_speakers(pool, user, job_id)
