"""Pruning of the tables that only grow: what each one keeps, and the loop that deletes the
rest in batches.

Each table is pruned by the one service that writes it, so a table's retention follows its
writer's needs and no two services delete the same rows:

- processed_events: each stage service, its own `consumer` rows. Marks older than
  `processed_events_retention_days` go (a redelivery within it is still recognised).
- stage_sweeps: each stage service, its own `stage` rows older than
  `stage_sweeps_retention_days`, never inside the sweeper's window (`sweep_window_s`).
- job_events: the gateway (it owns jobs). Events of finished jobs (latest event terminal)
  older than `job_events_retention_days` go; every event of an unfinished job stays, and so
  does each job's latest event (its seq goes on, feeds still see the job finished).
- webhook_deliveries (their webhook_attempts by cascade): the notifier. Finished deliveries
  (delivered / failed) older than `webhook_deliveries_retention_days` go; pending ones stay.

A retention of 0 days keeps a table for ever. Deletes run in batches of
`retention_batch_rows` (short transactions, no long locks), every `retention_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Counter

from mxw_shared.contracts import Stage
from mxw_shared.db import Pool
from mxw_shared.logging import get_logger
from mxw_shared.settings import CommonSettings

log = get_logger(__name__)

PRUNED_ROWS = Counter("mxw_retention_pruned_rows_total", "Rows deleted by retention", ["table"])

_TERMINAL = "('done', 'failed', 'cancelled')"
_DAYS = "now() - $1 * interval '1 day'"


@dataclass(frozen=True)
class PruneTask:
    """One batched delete: `select_ids` picks up to $2 row ids (ctid) older than $1 days;
    `args` follow from $3 on."""

    table: str
    days: float
    select_ids: str
    args: tuple[object, ...] = ()


def processed_events_task(settings: CommonSettings, consumer: str) -> PruneTask:
    return PruneTask(
        "processed_events",
        settings.processed_events_retention_days,
        "SELECT ctid FROM processed_events "
        f"WHERE consumer = $3 AND processed_at < {_DAYS} LIMIT $2",
        (consumer,),
    )


def stage_sweeps_task(settings: CommonSettings, stage: Stage) -> PruneTask:
    # Never inside the sweeper's window: its re-send counts stop crash loops.
    days = settings.stage_sweeps_retention_days
    if days > 0:
        days = max(days, settings.sweep_window_s / 86400)
    return PruneTask(
        "stage_sweeps",
        days,
        f"SELECT ctid FROM stage_sweeps WHERE stage = $3 AND swept_at < {_DAYS} LIMIT $2",
        (stage.value,),
    )


def job_events_task(settings: CommonSettings) -> PruneTask:
    return PruneTask(
        "job_events",
        settings.job_events_retention_days,
        "SELECT e.ctid FROM job_events e "
        "CROSS JOIN LATERAL (SELECT l.seq, l.state, l.created_at FROM job_events l "
        "  WHERE l.job_id = e.job_id ORDER BY l.seq DESC LIMIT 1) latest "
        f"WHERE e.created_at < {_DAYS} AND e.seq < latest.seq "
        f"  AND latest.state IN {_TERMINAL} AND latest.created_at < {_DAYS} "
        "LIMIT $2",
    )


def webhook_deliveries_task(settings: CommonSettings) -> PruneTask:
    return PruneTask(
        "webhook_deliveries",
        settings.webhook_deliveries_retention_days,
        "SELECT ctid FROM webhook_deliveries "
        f"WHERE state <> 'pending' AND finished_at < {_DAYS} LIMIT $2",
    )


def stage_service_tasks(settings: CommonSettings, stages: Sequence[Stage]) -> list[PruneTask]:
    """What a stage service prunes: its own dedupe marks and sweep rows."""
    return [
        processed_events_task(settings, settings.service_name),
        *(stage_sweeps_task(settings, stage) for stage in stages),
    ]


async def prune(pool: Pool, task: PruneTask, batch_rows: int) -> int:
    """Delete what `task` selects, a batch per transaction; returns the rows deleted."""
    if task.days <= 0:
        return 0
    total = 0
    while True:
        result = await pool.execute(
            f"DELETE FROM {task.table} WHERE ctid = ANY(ARRAY({task.select_ids}))",
            task.days,
            batch_rows,
            *task.args,
        )
        deleted = int(result.rsplit(" ", 1)[-1])
        total += deleted
        if deleted < batch_rows:
            break
    if total:
        PRUNED_ROWS.labels(task.table).inc(total)
    return total


class Pruner:
    """Runs `tasks` every `retention_interval_s` (the first round right after start)."""

    def __init__(self, pool: Pool, settings: CommonSettings, tasks: Sequence[PruneTask]) -> None:
        self.pool = pool
        self.settings = settings
        self.tasks = list(tasks)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def prune_once(self) -> dict[str, int]:
        deleted: dict[str, int] = {}
        for task in self.tasks:
            count = await prune(self.pool, task, self.settings.retention_batch_rows)
            deleted[task.table] = deleted.get(task.table, 0) + count
        return deleted

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                deleted = await self.prune_once()
                if any(deleted.values()):
                    log.info("retention pruned rows", **deleted)
            except Exception as exc:  # a database outage: next round
                log.warning("retention round failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.retention_interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="retention")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
