"""Prometheus metrics shared by the services (prometheus-client, default registry, served on
/metrics). Names follow Prometheus conventions (base units, `_total` for counters, `_seconds`);
labels only take values from small fixed sets (stage, topic, group, state, outcome): never a
job id, user or URI.

Gauges that describe the database (jobs by state, outbox backlog) are refreshed when /metrics
is scraped, so any replica reports the same truth and nothing polls between scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from mxw_shared.db import Pool

# Seconds: sub-second database stages up to two-hour transcriptions.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

JOBS = Gauge("mxw_jobs", "Jobs by overall state (current run), read from the database", ["state"])
QUEUE_WAIT = Histogram(
    "mxw_stage_queue_wait_seconds",
    "Time from the event that asks for a stage being written to the stage starting",
    ["stage"],
    buckets=DURATION_BUCKETS,
)
REALTIME_FACTOR = Histogram(
    "mxw_transcription_realtime_factor",
    "Transcription wall time divided by audio duration (lower is faster)",
    ["model", "device"],
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5),
)
AUDIO_SECONDS = Counter(
    "mxw_transcribed_audio_seconds_total", "Seconds of audio transcribed", ["model"]
)
DIARIZATION_REALTIME_FACTOR = Histogram(
    "mxw_diarization_realtime_factor",
    "Diarization wall time divided by audio duration (lower is faster)",
    ["model", "device"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2),
)
DIARIZED_AUDIO_SECONDS = Counter(
    "mxw_diarized_audio_seconds_total", "Seconds of audio diarized", ["model"]
)
CONSUMER_LAG = Gauge(
    "mxw_consumer_lag_records",
    "Records not yet consumed (high watermark - position) per topic and consumer group",
    ["topic", "group"],
)
OUTBOX_BACKLOG = Gauge("mxw_outbox_backlog_rows", "Outbox rows not yet published to Kafka")
OUTBOX_OLDEST_AGE = Gauge(
    "mxw_outbox_oldest_unsent_age_seconds", "Age of the oldest unpublished outbox row (0: none)"
)
DLQ_EVENTS = Counter(
    "mxw_dlq_events_total", "Events sent to a dead-letter topic, by original topic", ["topic"]
)
STAGE_RESULTS_DROPPED = Counter(
    "mxw_stage_results_dropped_total",
    "Stage results dropped because another worker had taken the stage over (lease lapsed)",
    ["stage"],
)
OUTBOX_QUARANTINED = Counter(
    "mxw_outbox_quarantined_total",
    "Outbox rows the broker can never take (too large, invalid topic), set aside as failed",
    ["topic"],
)
OUTBOX_QUARANTINED_ROWS = Gauge(
    "mxw_outbox_quarantined_rows", "Outbox rows set aside as unpublishable, waiting for a person"
)
SEARCH_SECONDS = Histogram(
    "mxw_search_duration_seconds",
    "Search latency, query embedding included",
    ["mode"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

Refresher = Callable[[], Awaitable[None]]


def observe_queue_wait(stage: str, written_at: datetime) -> None:
    """Queue wait of a stage from the CloudEvents time of the event that asked for it."""
    when = written_at if written_at.tzinfo else written_at.replace(tzinfo=UTC)
    QUEUE_WAIT.labels(stage).observe(max((datetime.now(UTC) - when).total_seconds(), 0.0))


async def observe_lag(consumer: Any, group: str) -> None:
    """Lag of the partitions this consumer owns: the high watermark its last fetch reported
    minus its position (both known locally, no broker round trip). Summed per topic."""
    per_topic: dict[str, int] = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is None:
            continue
        position = await consumer.position(tp)
        per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(high - position, 0)
    for topic, lag in per_topic.items():
        CONSUMER_LAG.labels(topic, group).set(lag)


async def refresh_outbox(pool: Pool) -> None:
    row = await pool.fetchrow(
        "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age"
        " FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL"
    )
    if row is not None:
        OUTBOX_BACKLOG.set(int(row["n"]))
        OUTBOX_OLDEST_AGE.set(float(row["age"]))
    OUTBOX_QUARANTINED_ROWS.set(
        int(await pool.fetchval("SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL"))
    )


def set_jobs_by_state(counts: dict[str, int]) -> None:
    for state in ("queued", "running", "done", "failed", "cancelled"):
        JOBS.labels(state).set(counts.get(state, 0))


async def refresh(refreshers: Iterable[Refresher], timeout_s: float = 2.0) -> None:
    """Run the scrape-time refreshers; one failing (database down) leaves its gauges stale
    rather than failing the scrape."""
    for refresher in refreshers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(refresher(), timeout_s)
