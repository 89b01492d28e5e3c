"""Running one pipeline stage on one event: the same steps for every worker service.

parse → de-duplicate (by ce_id) → check the job (exists, owner, not cancelled, stage not
already done) → start the stage under a lease → do the work with retries and a heartbeat →
commit results, stage state, next event, status event and the processed-event record in one
transaction. After the last attempt, or at once for errors that retrying cannot fix, the
stage fails with a readable reason, the event goes to `<topic>.dlq`, and the pipeline moves
on. A malformed record goes there at once; one whose handling raises something other than an
outage `max_handler_attempts` times the consumer hands to `give_up`. The stage's end is
written only while this worker holds its lease: a worker that lost it drops its result.
The Kafka offset is committed by the caller only after this returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Histogram

from mxw_shared import metrics, telemetry, transitions
from mxw_shared.contracts import (
    Envelope,
    EventData,
    JobOptions,
    JobState,
    Stage,
    decode_headers,
    parse_event,
)
from mxw_shared.db import Connection, Pool
from mxw_shared.deadletter import MAX_REASON_CHARS, clean_text, dead_letter, is_outage
from mxw_shared.jobs import JobRow, get_job
from mxw_shared.logging import get_logger
from mxw_shared.settings import CommonSettings
from mxw_shared.stages import PIPELINE, Pipeline

log = get_logger(__name__)

EVENTS = Counter("mxw_events_total", "Events handled, by outcome", ["topic", "outcome"])
STAGE_SECONDS = Histogram(
    "mxw_stage_seconds",
    "Wall time of a stage's work",
    ["stage"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)

In = TypeVar("In", bound=EventData)


class PermanentError(Exception):
    """Retrying will not help (undecodable audio, unknown model): fail the job at once."""


class JobCancelled(Exception):
    pass


class StageTakenOver(Exception):
    """Another worker holds the stage now (this one's lease lapsed): stop, and drop the
    results; the newer attempt owns the outcome."""


@dataclass
class StageOutcome:
    """What a stage's work produced: rows to write and the event that announces them."""

    persist: Callable[[Connection], Awaitable[None]]
    next_event: EventData | None
    message: str
    metrics: dict[str, Any] = field(default_factory=dict)


class Progress:
    """A running stage's handle on its job: reports progress as job.status, at most every
    `min_interval_s`, and writes partial results (`checkpoint`) while the stage is held.
    Both raise JobCancelled once the job was cancelled, so work stops at its next call."""

    def __init__(
        self,
        pool: Pool,
        job: JobRow,
        stage: Stage,
        source: str,
        worker: str,
        min_interval_s: float = 0.5,
    ) -> None:
        self._pool = pool
        self._job = job
        self._stage = stage
        self._source = source
        self._worker = worker
        self._min_interval_s = min_interval_s
        self._last = 0.0

    async def checkpoint(self, write: Callable[[Connection], Awaitable[None]]) -> bool:
        """Run `write` in a transaction while this worker holds the stage; False (nothing
        written) when another worker took the stage over: this one's results are dropped."""
        async with self._pool.acquire() as conn, conn.transaction():
            held = await transitions.checkpoint(
                conn, self._job.id, self._stage, self._worker, write
            )
        if held is transitions.Hold.cancelled:
            raise JobCancelled
        return held is transitions.Hold.held

    async def __call__(self, fraction: float, message: str | None = None) -> None:
        now = time.monotonic()
        if now - self._last < self._min_interval_s:
            return
        self._last = now
        async with self._pool.acquire() as conn, conn.transaction():
            if not await transitions.report_progress(
                conn, self._job, self._stage, fraction, source=self._source, message=message
            ):
                raise JobCancelled


class Verdict(StrEnum):
    run = "run"
    skip = "skip"  # recorded as processed, nothing else
    dead_letter = "dead-letter"


@dataclass(frozen=True)
class StageRowState:
    """What admission needs of the stage's row."""

    state: str
    generation: int
    lease_owner: str | None
    leased: bool  # its lease has not run out


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    outcome: str  # the handler's outcome (metrics label) when the event is not run
    reason: str | None = None


def rejection(job: JobRow | None, event: EventData) -> str | None:
    """Why an event may not act on its job: the job is unknown, or belongs to another."""
    if job is None:
        return f"unknown job {event.job_id}"
    if job.owner_id != event.owner_id:
        return "event owner does not match the job's owner"
    return None


def admit(
    job: JobRow | None,
    event: EventData,
    row: StageRowState | None,
    worker_id: str,
    *,
    refused: str | None = None,
    job_deleted: bool = False,
    waiting_for: tuple[str, ...] = (),
    requested: bool = True,
) -> Admission:
    """Whether a stage runs an event, skips it or dead-letters it: the one rule, over the
    job row (after adoption), the stage's row and the event (`refused`: why adopting the
    job failed; `job_deleted`: no job row because its owner deleted the job; `waiting_for`:
    prerequisites of a join not done in this run yet). Pure: the runner does the I/O."""
    if job is None and job_deleted:
        return Admission(Verdict.skip, "deleted", "the job was deleted")
    if reason := refused or rejection(job, event):
        return Admission(Verdict.dead_letter, "rejected", reason)
    assert job is not None
    if job.cancelled:
        return Admission(Verdict.skip, "cancelled")
    if event.generation < job.generation:
        return Admission(Verdict.skip, "stale-generation", "a run the job was reprocessed past")
    if not requested:
        return Admission(Verdict.skip, "not-requested", "the job's options do not ask for it")
    if row is not None and row.generation >= event.generation:
        if row.state in (JobState.done, JobState.failed, JobState.cancelled):
            return Admission(Verdict.skip, "already-finished", f"stage {row.state}")
        if (
            row.state == JobState.running
            and row.leased
            and row.lease_owner is not None
            and row.lease_owner != worker_id
        ):
            # Another worker holds a live lease (a redelivery or a re-send while it works).
            # Should that worker be dead, its lease runs out and the sweeper sends the work
            # again.
            return Admission(Verdict.skip, "running-elsewhere", f"lease of {row.lease_owner}")
    if waiting_for:
        # The last prerequisite to complete sends this stage's input again (StageRunner
        # `_send_joins`), and the sweeper re-sends it should that be lost.
        return Admission(Verdict.skip, "waiting", f"waiting for {', '.join(waiting_for)}")
    return Admission(Verdict.run, "run")


StageWork = Callable[[Envelope, In, JobRow, Progress], Awaitable[StageOutcome]]
AdoptJob = Callable[[Connection, Envelope, In], Awaitable[JobRow]]


class StageRunner(Generic[In]):
    def __init__(
        self,
        *,
        pool: Pool,
        settings: CommonSettings,
        stage: Stage,
        work: StageWork[In],
        adopt_job: AdoptJob[In] | None = None,
        pipeline: Pipeline = PIPELINE,
        topic: str | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.stage = stage
        self.pipeline = pipeline
        # The stage's input, or another of the topics it consumes (an edit re-cutting chunks).
        self.topic = pipeline[stage].topic if topic is None else topic
        if self.topic not in pipeline[stage].topics:
            raise ValueError(f"stage {stage} does not consume {self.topic}")
        self.work = work
        self.adopt_job = adopt_job
        self.consumer = settings.service_name
        self.worker_id = f"{settings.service_name}-{settings.instance_id}-{uuid.uuid4().hex[:8]}"

    async def handle(self, headers: object, body: bytes, key: bytes | None = None) -> str:
        """Handle one record (`headers` as the Kafka client hands them over); returns the
        outcome. A malformed record is dead-lettered here. Raises when the database is
        unreachable, so the caller does not commit the offset and the record comes back;
        an error that is no outage the caller counts, and after `max_handler_attempts` it
        hands the record to `give_up`."""
        try:
            decoded = decode_headers(headers)
        except Exception:  # headers of an unknown shape: the contract check refuses them
            decoded = {}
        # One span per event handled, a child of the span that published it (traceparent).
        service = self.settings.service_name
        with telemetry.consume_span(self.topic, decoded, service, self.consumer) as span:
            outcome = await self._handle(headers, decoded, body, key)
            span.set_attribute("mxw.outcome", outcome)
        EVENTS.labels(self.topic, outcome).inc()
        return outcome

    async def _handle(
        self, headers: object, decoded: dict[str, str], body: bytes, key: bytes | None
    ) -> str:
        limit = self.settings.max_event_bytes
        try:
            if len(body) > limit:
                raise ValueError(f"{len(body)} bytes, more than MXW_MAX_EVENT_BYTES ({limit})")
            envelope, data = parse_event(self.topic, decoded, body)
        except Exception as exc:  # whatever a record can cause: ValueError, RecursionError
            invalid = f"invalid event: {exc}"
            log.warning("invalid event dead-lettered", topic=self.topic, error=invalid[:500])
            async with self.pool.acquire() as conn, conn.transaction():
                await self._dead_letter(conn, headers, body, key, invalid, 0)
            return "invalid"
        typed: In = data  # type: ignore[assignment]  # parse_event checked the topic's model
        bound = log.bind(job_id=str(data.job_id), event_id=envelope.id, topic=self.topic)

        async with self.pool.acquire() as conn:
            if await self._seen(conn, envelope.id):
                bound.info("duplicate event skipped")
                return "duplicate"
            async with conn.transaction():
                job = await get_job(conn, data.job_id)
                deleted = job is None and bool(
                    await conn.fetchval("SELECT 1 FROM deleted_jobs WHERE id = $1", data.job_id)
                )
                reason: str | None = None
                if job is None and not deleted and self.adopt_job is not None:
                    try:
                        job = await self.adopt_job(conn, envelope, typed)
                    except PermanentError as exc:  # refused before any row was written
                        reason = f"job not adopted: {exc}"
                row = (
                    await conn.fetchrow(
                        "SELECT state, generation, lease_owner,"
                        " coalesce(lease_expires_at > now(), false) AS leased"
                        " FROM job_stages WHERE job_id = $1 AND stage = $2",
                        job.id,
                        self.stage.value,
                    )
                    if job is not None
                    else None
                )
                decision = admit(
                    job,
                    data,
                    StageRowState(**dict(row)) if row is not None else None,
                    self.worker_id,
                    refused=reason,
                    job_deleted=deleted,
                    waiting_for=await self._waiting_for(conn, job),
                    requested=job is None
                    or self.pipeline[self.stage].requested(
                        JobOptions.model_validate(job.options or {})
                    ),
                )
                if decision.verdict == Verdict.dead_letter:
                    bound.warning("event rejected", reason=decision.reason)
                    await self._dead_letter(conn, headers, body, key, decision.reason or "", 0)
                    return decision.outcome
                if decision.verdict == Verdict.skip:
                    await self._mark_processed(conn, envelope.id)
                    bound.info("event skipped", outcome=decision.outcome, reason=decision.reason)
                    return decision.outcome
                assert job is not None
                attempt = await transitions.start(
                    conn,
                    job,
                    self.stage,
                    worker=self.worker_id,
                    lease_s=self.settings.lease_s,
                    generation=data.generation,
                    source=self.settings.service_name,
                    queued_at=envelope.time,
                    pipeline=self.pipeline,
                )
                if attempt == 1:
                    metrics.observe_queue_wait(self.stage.value, envelope.time)

        return await self._run(envelope, typed, job, headers, body, key, bound)

    async def _run(
        self,
        envelope: Envelope,
        data: In,
        job: JobRow,
        headers: object,
        body: bytes,
        key: bytes | None,
        bound: Any,
    ) -> str:
        progress = Progress(self.pool, job, self.stage, self.settings.service_name, self.worker_id)
        heartbeat = asyncio.create_task(self._heartbeat(job))
        started = time.monotonic()
        error: str | None = None
        outcome: StageOutcome | None = None
        try:
            for attempt in range(1, self.settings.max_attempts + 1):
                try:
                    with telemetry.span(f"{self.stage.value} work", attempt=attempt):
                        outcome = await self.work(envelope, data, job, progress)
                    break
                except JobCancelled:
                    await self._finish_cancelled(job, envelope)
                    bound.info("stage stopped: job cancelled")
                    return "cancelled"
                except StageTakenOver:
                    async with self.pool.acquire() as conn:
                        return await self._lease_lost(conn, envelope, bound)
                except PermanentError as exc:
                    error = str(exc)
                    break
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    bound.warning("stage attempt failed", attempt=attempt, error=error)
                    if attempt < self.settings.max_attempts:
                        # Exponential backoff with jitter, so replicas do not retry in step.
                        delay = self.settings.retry_backoff_s * 2 ** (attempt - 1)
                        await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311
        except asyncio.CancelledError:
            # Shutdown ran out of grace: give the job up at once, so the replica that gets
            # the (uncommitted) record again does not wait for the lease to run out.
            await asyncio.shield(self._release_lease(job))
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        STAGE_SECONDS.labels(self.stage.value).observe(time.monotonic() - started)

        if outcome is None:
            reason = error or "unknown error"
            bound.error("stage failed", error=reason)
            async with self.pool.acquire() as conn, conn.transaction():
                letter = self._letter(headers, body, key, self.settings.max_attempts)
                if not await self._fail(conn, job, reason, worker=self.worker_id, letter=letter):
                    return await self._lease_lost(conn, envelope, bound)
                await self._mark_processed(conn, envelope.id)
            return "failed"

        async with self.pool.acquire() as conn, conn.transaction():
            completion = await transitions.complete(
                conn,
                job,
                self.stage,
                persist=outcome.persist,
                next_event=outcome.next_event,
                message=outcome.message,
                metrics={**outcome.metrics, "wall_s": round(time.monotonic() - started, 3)},
                worker=self.worker_id,
                generation=data.generation,
                source=self.settings.service_name,
                traceparent=envelope.traceparent,
                pipeline=self.pipeline,
            )
            if completion is transitions.Completion.lease_lost:
                return await self._lease_lost(conn, envelope, bound)
            await self._mark_processed(conn, envelope.id)
        if completion is transitions.Completion.done:
            bound.info("stage done", message=outcome.message)
        return completion.value

    async def _waiting_for(self, conn: Connection, job: JobRow | None) -> tuple[str, ...]:
        """The prerequisites of a join not done in the job's current run yet."""
        if job is None:
            return ()
        waiting = await transitions.not_done(
            conn, job, self.pipeline.waits_for(self.stage), self.pipeline
        )
        return tuple(s.value for s in waiting)

    async def _lease_lost(self, conn: Connection, envelope: Envelope, bound: Any) -> str:
        """Another worker took this stage over while this one worked (its lease lapsed, the
        work was sent again): the newer attempt owns the outcome, this result is dropped."""
        await self._mark_processed(conn, envelope.id)
        metrics.STAGE_RESULTS_DROPPED.labels(self.stage.value).inc()
        bound.warning("stage result dropped: another worker holds the stage now")
        return "lease-lost"

    async def give_up(
        self, headers: object, body: bytes, key: bytes | None, error: BaseException, attempts: int
    ) -> None:
        """The record failed `attempts` times with errors that are no outage (the same on
        every try): dead-letter it and fail its job's stage with the reason, so the
        partition moves on. Raises only on an outage."""
        reason = clean_text(
            f"{self.stage.value} failed {attempts} times: {type(error).__name__}: {error}",
            MAX_REASON_CHARS,
        )
        log.error("record dead-lettered after repeated errors", topic=self.topic, error=reason)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await self._fail_stage_of(conn, headers, body, reason)
                await self._dead_letter(conn, headers, body, key, reason, attempts)
        except Exception as exc:
            if is_outage(exc):
                raise
            # Failing the job is what fails: the record still leaves the partition.
            log.error("job of a dead-lettered record not failed", error=repr(exc)[:500])
            await self.dead_letter(headers, body, key, reason, attempts)
        EVENTS.labels(self.topic, "gave-up").inc()

    async def dead_letter(
        self, headers: object, body: bytes, key: bytes | None, reason: str, attempts: int = 0
    ) -> None:
        """Dead-letter a record in a transaction of its own."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._dead_letter(conn, headers, body, key, reason, attempts)

    async def _fail_stage_of(
        self, conn: Connection, headers: object, body: bytes, reason: str
    ) -> None:
        """Fail the stage of the record's job, unless the record names no job of its owner,
        or the stage finished or runs under another worker's live lease meanwhile."""
        try:
            envelope, data = parse_event(self.topic, decode_headers(headers), body)
        except Exception:
            return
        job = await get_job(conn, data.job_id)
        if job is None or rejection(job, data) is not None:
            return
        row = await conn.fetchrow(
            "SELECT state, generation, lease_owner, lease_expires_at > now() AS leased"
            " FROM job_stages WHERE job_id = $1 AND stage = $2 FOR UPDATE",
            job.id,
            self.stage.value,
        )
        if row is not None and (
            (
                row["state"] in (JobState.done, JobState.cancelled)
                and row["generation"] >= data.generation
            )
            or (row["leased"] and row["lease_owner"] not in (None, self.worker_id))
        ):
            return
        await self._fail(conn, job, reason)
        await self._mark_processed(conn, envelope.id)

    async def _fail(
        self,
        conn: Connection,
        job: JobRow,
        reason: str,
        worker: str | None = None,
        letter: transitions.Letter | None = None,
    ) -> bool:
        return await transitions.fail(
            conn,
            job_id=job.id,
            owner_id=job.owner_id,
            stage=self.stage,
            reason=reason,
            source=self.settings.service_name,
            worker=worker,
            letter=letter,
        )

    def _letter(
        self, headers: object, body: bytes, key: bytes | None, attempts: int
    ) -> transitions.Letter:
        return transitions.Letter(
            topic=self.topic,
            headers=headers,
            body=body,
            key=key,
            consumer=self.consumer,
            attempts=attempts,
            max_body_bytes=self.settings.max_event_bytes,
        )

    async def _heartbeat(self, job: JobRow) -> None:
        interval = max(self.settings.lease_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.pool.acquire() as conn:
                    await transitions.extend_lease(
                        conn, job.id, self.stage, self.worker_id, self.settings.lease_s
                    )
            except Exception as exc:  # a missed beat is not fatal; the next one may land
                log.warning("lease heartbeat failed", job_id=str(job.id), error=repr(exc))

    async def _release_lease(self, job: JobRow) -> None:
        try:
            async with self.pool.acquire() as conn:
                await transitions.release_lease(
                    conn, job.id, self.stage, self.worker_id, self.settings.stuck_after_s
                )
        except Exception as exc:  # the lease then simply runs out
            log.warning("lease release failed", job_id=str(job.id), error=repr(exc))

    async def _finish_cancelled(self, job: JobRow, envelope: Envelope) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # False when another worker holds the stage now: that one reports it.
            await transitions.stop_cancelled(
                conn, job, self.stage, worker=self.worker_id, source=self.settings.service_name
            )
            await self._mark_processed(conn, envelope.id)

    async def _seen(self, conn: Connection, event_id: str) -> bool:
        return bool(
            await conn.fetchval(
                "SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2",
                self.consumer,
                event_id,
            )
        )

    async def _mark_processed(self, conn: Connection, event_id: str) -> None:
        await conn.execute(
            "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) "
            "ON CONFLICT DO NOTHING",
            self.consumer,
            event_id,
        )

    async def _dead_letter(
        self,
        conn: Connection,
        headers: object,
        body: bytes,
        key: bytes | None,
        reason: str,
        attempts: int,
    ) -> None:
        await dead_letter(
            conn,
            topic=self.topic,
            raw_headers=headers,
            body=body,
            key=key,
            reason=reason,
            consumer=self.consumer,
            attempts=attempts,
            max_body_bytes=self.settings.max_event_bytes,
        )
