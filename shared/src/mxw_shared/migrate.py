"""`mxw-migrate`: bring the database schema up to date. Safe to run from several places at
once (an advisory lock serialises them) and again and again (applied versions are skipped,
and a changed file that was already applied is an error, not a silent skip)."""

from __future__ import annotations

import argparse
import asyncio

import asyncpg

from mxw_shared.locks import MIGRATIONS as _LOCK_ID
from mxw_shared.logging import configure_logging, get_logger
from mxw_shared.migrations import load_migrations
from mxw_shared.settings import CommonSettings

log = get_logger(__name__)


async def migrate(dsn: str) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[int] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        newest_applied = max(done, default=0)
        for m in load_migrations():
            if m.version not in done and m.version < newest_applied:
                raise RuntimeError(
                    f"migration {m.version} ({m.name}) is older than the applied version"
                    f" {newest_applied}: renumber it above"
                )
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise RuntimeError(
                        f"migration {m.version} ({m.name}) changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
            log.info("migration applied", version=m.version, name=m.name)
            applied_now.append(m.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
        await conn.close()
    return applied_now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", help="defaults to MXW_DATABASE_URL")
    args = parser.parse_args()
    settings = CommonSettings()
    configure_logging(settings.log_level, settings.log_format, "migrate")
    applied = asyncio.run(migrate(args.database_url or settings.dsn))
    log.info("schema up to date", applied=applied)


if __name__ == "__main__":
    main()
