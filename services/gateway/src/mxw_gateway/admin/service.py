"""Admin use cases: users, the system at a glance, dead letters and their replay."""

from __future__ import annotations

from datetime import UTC, datetime

from mxw_shared import transitions
from mxw_shared.contracts import DeadLetter as DeadLetterReason
from mxw_shared.contracts import JobState
from mxw_shared.db import BIGINT_MAX, INT_MAX, Pool
from mxw_shared.problems import Problem

from mxw_gateway.admin import kafka
from mxw_gateway.admin.schemas import (
    ConsumerLag,
    DeadLetter,
    PartitionLagView,
    ReplayResult,
    SystemView,
    UserChange,
    UserView,
)
from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs.repository import JOB_STATE_SQL
from mxw_gateway.jobs.views import get_job_view
from mxw_gateway.settings import GatewaySettings

_USER_COLUMNS = """u.id, u.name, u.email, u.role, u.role_set_by_admin, u.disabled, u.created_at,
    u.last_seen_at,
    (SELECT count(*) FROM jobs j WHERE j.owner_id = u.id) AS job_count"""


async def list_users(pool: Pool, limit: int, offset: int) -> list[UserView]:
    rows = await pool.fetch(
        f"SELECT {_USER_COLUMNS} FROM users u ORDER BY u.created_at, u.id LIMIT $1 OFFSET $2",
        limit,
        offset,
    )
    return [UserView(**dict(r)) for r in rows]


async def get_user(pool: Pool, user_id: str) -> UserView:
    row = await pool.fetchrow(f"SELECT {_USER_COLUMNS} FROM users u WHERE u.id = $1", user_id)
    if row is None:
        raise Problem(404, "Not found", f"no user {user_id!r}")
    return UserView(**dict(row))


async def change_user(pool: Pool, admin: CurrentUser, user_id: str, change: UserChange) -> UserView:
    if user_id == admin.sub and (change.disabled or change.role == "user"):
        raise Problem(409, "Refused", "admins cannot disable or demote themselves")
    result = await pool.execute(
        "UPDATE users SET role = coalesce($2, role), disabled = coalesce($3, disabled),"
        " role_set_by_admin = role_set_by_admin OR $2 IS NOT NULL"
        " WHERE id = $1",
        user_id,
        change.role,
        change.disabled,
    )
    if result.endswith(" 0"):
        raise Problem(404, "Not found", f"no user {user_id!r}")
    return await get_user(pool, user_id)


async def system_view(pool: Pool, settings: GatewaySettings) -> SystemView:
    rows = await pool.fetch(
        f"SELECT ({JOB_STATE_SQL}) AS state, count(*) AS n FROM jobs GROUP BY 1"
    )
    by_state = {s.value: 0 for s in JobState} | {r["state"]: r["n"] for r in rows}
    try:
        lag = await kafka.consumer_lag(settings)
        _, dead = await kafka.read_dead_letters(settings, limit=0)
    except Exception as exc:  # the view is most useful exactly when the broker struggles
        raise Problem(503, "Broker unavailable", f"could not read the broker: {exc}") from exc
    return SystemView(
        jobs_by_state=by_state,
        consumer_lag=[_lag_view(topic, group, partitions) for topic, group, partitions in lag],
        dead_letters=dead,
    )


def _lag_view(topic: str, group: str, partitions: list[kafka.PartitionLag]) -> ConsumerLag:
    return ConsumerLag(
        topic=topic,
        group=group,
        lag=sum(p.lag for p in partitions if p.lag is not None),
        waiting=sum(p.waiting for p in partitions),
        end_offset=sum(p.log_end_offset for p in partitions),
        committed=sum(p.committed_offset or 0 for p in partitions),
        partitions=[
            PartitionLagView(
                partition=p.partition,
                log_start_offset=p.log_start_offset,
                log_end_offset=p.log_end_offset,
                committed_offset=p.committed_offset,
                lag=p.lag,
            )
            for p in partitions
        ],
    )


def _view(record: kafka.RawRecord) -> DeadLetter:
    h = record.headers
    why = DeadLetterReason.from_headers(h)
    return DeadLetter(
        id=record.id,
        topic=record.topic,
        original_topic=why.original_topic if why else None,
        job_id=record.key.decode(errors="replace") if record.key else None,
        error=why.error if why else None,
        consumer=why.consumer if why else None,
        attempts=why.attempts if why else None,
        event_id=h.get("ce_id"),
        event_type=h.get("ce_type"),
        time=datetime.fromtimestamp(record.timestamp_ms / 1000, UTC),
        payload=record.value.decode(errors="replace"),
    )


async def dead_letters(settings: GatewaySettings, limit: int) -> list[DeadLetter]:
    records, _ = await kafka.read_dead_letters(settings, limit)
    return [_view(r) for r in records]


def _parse_id(dead_letter_id: str) -> tuple[str, int, int]:
    topic, _, rest = dead_letter_id.rpartition(":")
    topic, _, partition = topic.rpartition(":")
    if (
        not topic.endswith(".dlq")
        or not (partition.isascii() and partition.isdigit() and int(partition) <= INT_MAX)
        or not (rest.isascii() and rest.isdigit() and int(rest) <= BIGINT_MAX)
    ):
        raise Problem(422, "Invalid request", "dead-letter ids look like <topic>.dlq:<p>:<offset>")
    return topic, int(partition), int(rest)


async def replay(
    pool: Pool, settings: GatewaySettings, admin: CurrentUser, dead_letter_id: str
) -> ReplayResult:
    """Give a dead-lettered event another chance. A job that failed at that event's stage
    is reprocessed from that stage (a new run: the failed one stays in the history);
    anything else is published again to its original topic under a new event id."""
    topic, partition, offset = _parse_id(dead_letter_id)
    try:
        record = await kafka.read_one(settings, topic, partition, offset)
    except kafka.BrokerTimeout as exc:
        raise Problem(503, "Broker unavailable", f"try again: {exc}") from exc
    if record is None:
        raise Problem(404, "Not found", f"no dead letter {dead_letter_id}")
    async with pool.acquire() as conn, conn.transaction():
        replayed = await transitions.replay(
            conn,
            topic=topic,
            key=record.key,
            headers=record.headers,
            body=record.value,
            letter_id=dead_letter_id,
            source=settings.service_name,
        )
    if replayed.action is transitions.Replayed.rerun and replayed.job_id is not None:
        job = await get_job_view(pool, settings, admin, replayed.job_id)
        return ReplayResult(dead_letter=dead_letter_id, action="reprocessed", job=job)
    return ReplayResult(
        dead_letter=dead_letter_id, action="republished", event_id=replayed.event_id
    )
