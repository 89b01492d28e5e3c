"""asyncpg pool with pgvector codecs, and the schema-version check services run at start-up."""

from __future__ import annotations

import contextlib
import json
from typing import TypeAlias

import asyncpg
from pgvector.asyncpg import register_vector

from mxw_shared.migrations import latest_version

# The largest signed 32- and 64-bit integers: Postgres integer and bigint columns (and Kafka
# partitions and offsets). A number from a request that meets such a column must be bounded
# by these: asyncpg refuses a larger one, which would otherwise be a 500.
INT_MAX = 2**31 - 1
BIGINT_MAX = 2**63 - 1

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record]"


class SchemaOutOfDate(RuntimeError):
    pass


async def _init_connection(conn: Connection) -> None:
    # No pgvector yet: check_schema() then says "run migrate" instead of failing here.
    with contextlib.suppress(ValueError):
        await register_vector(conn)
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection
    )
    assert pool is not None
    return pool


async def check_schema(pool: Pool) -> int:
    """Fail fast when `migrate` has not run (or a newer service meets an older schema)."""
    try:
        version = await pool.fetchval("SELECT max(version) FROM schema_migrations")
    except asyncpg.UndefinedTableError as exc:
        raise SchemaOutOfDate("database has no schema: run the migrate step first") from exc
    expected = latest_version()
    if version is None or version < expected:
        raise SchemaOutOfDate(
            f"database schema is at version {version}, this service needs {expected}: run migrate"
        )
    return int(version)
