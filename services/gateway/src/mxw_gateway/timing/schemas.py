"""Timing views: when each stage of a job was asked for, started and finished."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class StageTiming(BaseModel):
    stage: str
    state: str
    generation: int = Field(description="Run of the job these times belong to.")
    attempts: int
    queued_at: datetime | None = Field(
        description="When the event asking for this stage was written (its CloudEvents time)."
    )
    started_at: datetime | None
    finished_at: datetime | None
    queue_wait_s: float | None = Field(description="started_at - queued_at.")
    run_s: float | None = Field(description="finished_at - started_at (all attempts).")


class JobTiming(BaseModel):
    job_id: uuid.UUID
    created_at: datetime
    finished_at: datetime | None = Field(description="When the last stage finished, if done.")
    total_s: float | None = Field(description="finished_at - created_at.")
    stages: list[StageTiming]


class Percentiles(BaseModel):
    p50: float
    p90: float
    p95: float
    p99: float
    max: float


class StageAggregate(BaseModel):
    stage: str
    done: int = Field(description="Stage runs finished successfully in the window.")
    failed: int = Field(description="Stage runs that failed in the window.")
    queue_wait_s: Percentiles | None
    run_s: Percentiles | None


class TimingReport(BaseModel):
    window_s: int
    since: datetime
    jobs_done: int = Field(description="Jobs whose last stage finished in the window.")
    end_to_end_s: Percentiles | None = Field(description="Upload to last stage finished.")
    stages: list[StageAggregate]
