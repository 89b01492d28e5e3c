"""Timing from the stage rows (job_stages): no extra bookkeeping, the same rows the pipeline
writes. Percentiles are computed by Postgres (percentile_cont) over the window."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from mxw_shared.db import Pool
from mxw_shared.metrics import set_jobs_by_state
from mxw_shared.stages import PIPELINE
from mxw_shared.transitions import ran_sql

from mxw_gateway.auth import CurrentUser
from mxw_gateway.jobs.repository import JOB_STATE_SQL
from mxw_gateway.jobs.views import load_owned_job
from mxw_gateway.timing.schemas import (
    JobTiming,
    Percentiles,
    StageAggregate,
    StageTiming,
    TimingReport,
)

_ORDER = {stage.value: i for i, stage in enumerate(PIPELINE.order)}
_FINAL = [stage.value for stage in PIPELINE.final]


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max((end - start).total_seconds(), 0.0), 3)


async def job_timing(pool: Pool, user: CurrentUser, job_id: uuid.UUID) -> JobTiming:
    job = await load_owned_job(pool, user, job_id)
    rows = await pool.fetch(
        "SELECT stage, state, generation, attempts, queued_at, started_at, finished_at"
        f" FROM job_stages s WHERE job_id = $1 AND {ran_sql('s')}",
        job_id,
    )
    stages = [
        StageTiming(
            stage=r["stage"],
            state=r["state"],
            generation=r["generation"],
            attempts=r["attempts"],
            queued_at=r["queued_at"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            queue_wait_s=_seconds(r["queued_at"], r["started_at"]),
            run_s=_seconds(r["started_at"], r["finished_at"]),
        )
        for r in sorted(rows, key=lambda r: _ORDER.get(r["stage"], 99))
    ]
    # The job ended when the last of its final stages did.
    ends = [s.finished_at for s in stages if s.stage in _FINAL and s.state == "done"]
    finished_at = max(e for e in ends if e) if len(ends) == len(_FINAL) and all(ends) else None
    return JobTiming(
        job_id=job_id,
        created_at=job["created_at"],
        finished_at=finished_at,
        total_s=_seconds(job["created_at"], finished_at),
        stages=stages,
    )


_PERCENTILES = """percentile_cont(0.5) WITHIN GROUP (ORDER BY {x}) AS {n}_p50,
    percentile_cont(0.9) WITHIN GROUP (ORDER BY {x}) AS {n}_p90,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY {x}) AS {n}_p95,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY {x}) AS {n}_p99,
    max({x}) AS {n}_max"""
_WAIT = "extract(epoch FROM s.started_at - s.queued_at)"
_RUN = "extract(epoch FROM s.finished_at - s.started_at)"
_TOTAL = "extract(epoch FROM e.finished_at - j.created_at)"


def _percentiles(row: Any, name: str) -> Percentiles | None:
    if row[f"{name}_p50"] is None:
        return None
    return Percentiles(
        **{p: round(float(row[f"{name}_{p}"]), 3) for p in ("p50", "p90", "p95", "p99", "max")}
    )


async def timing_report(pool: Pool, window_s: int) -> TimingReport:
    """Percentiles per stage of the stage runs that finished in the last `window_s`."""
    async with pool.acquire() as conn:
        since: datetime = await conn.fetchval(
            "SELECT now() - make_interval(secs => $1)", float(window_s)
        )
        rows = await conn.fetch(
            f"""SELECT s.stage,
                   count(*) FILTER (WHERE s.state = 'done') AS done,
                   count(*) FILTER (WHERE s.state = 'failed') AS failed,
                   {_PERCENTILES.format(x=_WAIT, n="wait")},
                   {_PERCENTILES.format(x=f"CASE WHEN s.state = 'done' THEN {_RUN} END", n="run")}
                FROM job_stages s
                WHERE s.finished_at >= $1 AND s.state IN ('done', 'failed') AND {ran_sql("s")}
                GROUP BY s.stage""",
            since,
        )
        # A job's end: when the last of its final stages was done.
        total = await conn.fetchrow(
            f"""SELECT count(*) AS n, {_PERCENTILES.format(x=_TOTAL, n="total")}
                FROM (SELECT s.job_id, max(s.finished_at) AS finished_at FROM job_stages s
                      WHERE s.stage = ANY($2::text[]) AND s.state = 'done'
                      GROUP BY s.job_id HAVING count(*) = cardinality($2::text[])) e
                JOIN jobs j ON j.id = e.job_id
                WHERE e.finished_at >= $1""",
            since,
            _FINAL,
        )
    by_stage = {r["stage"]: r for r in rows}
    stages = []
    for stage in PIPELINE.order:
        row = by_stage.get(stage.value)
        stages.append(
            StageAggregate(
                stage=stage.value,
                done=row["done"] if row else 0,
                failed=row["failed"] if row else 0,
                queue_wait_s=_percentiles(row, "wait") if row else None,
                run_s=_percentiles(row, "run") if row else None,
            )
        )
    return TimingReport(
        window_s=window_s,
        since=since,
        jobs_done=total["n"] if total else 0,
        end_to_end_s=_percentiles(total, "total") if total else None,
        stages=stages,
    )


async def refresh_job_gauges(pool: Pool) -> None:
    """mxw_jobs{state}: jobs per overall state by the gateway's own state rule, at scrape."""
    rows = await pool.fetch(
        f"SELECT ({JOB_STATE_SQL}) AS state, count(*) AS n FROM jobs GROUP BY 1"
    )
    set_jobs_by_state({str(r["state"]): int(r["n"]) for r in rows})
