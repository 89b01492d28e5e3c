"""The stage sweeper: no accepted job stays stuck without a reason.

Two ways work gets lost, and both end up here:
- a worker dies mid-job (SIGKILL, out of memory, node lost): its lease stops being renewed;
  Kafka delivers the record again, but the replica that gets it sees a live lease and skips
  it, so when the lease expires the input is re-sent;
- the event itself is gone (an in-memory broker came back empty, a topic was recreated):
  the job shows no activity for `stuck_after_s` while its stage never started, so the input
  is re-sent.

Each worker service sweeps its own stage. Several replicas may sweep at once: a round holds
a per-stage advisory lock and the job rows it re-sends for are locked with SKIP LOCKED. A
re-send is the stage's input event rebuilt from the database, written to the outbox with a
status line in the job's history, in one transaction; consumers skip it if the stage got
done meanwhile. Re-sends of one run back off exponentially, and after `sweep_max_resends`
the stage fails with the reason and the input goes to the dead-letter topic, where an admin
can replay it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

from asyncpg import Record
from prometheus_client import Counter

from mxw_shared import transitions
from mxw_shared.contracts import Envelope, JobOptions, Stage
from mxw_shared.db import Connection, Pool
from mxw_shared.jobs import STAGE_ORDER, JobRow
from mxw_shared.locks import STAGE_SWEEP as _SWEEP_LOCK
from mxw_shared.logging import get_logger
from mxw_shared.settings import CommonSettings
from mxw_shared.stage_inputs import rebuild_stage_input
from mxw_shared.stages import PIPELINE, Pipeline

log = get_logger(__name__)
SWEPT = Counter(
    "mxw_sweeper_actions_total", "Stage inputs re-sent or given up", ["stage", "action"]
)

_CANDIDATES = """
WITH recent AS (
    SELECT DISTINCT job_id FROM job_events
    WHERE created_at > now() - make_interval(secs => $4)
    UNION
    SELECT job_id FROM job_stages
    WHERE stage = $1 AND state = 'running' AND lease_expires_at < now()
)
SELECT j.id, j.generation, j.owner_id, j.options, coalesce(s.attempts, 0) AS attempts,
       CASE WHEN s.state = 'running' THEN 'lease expired' ELSE 'no progress' END AS why,
       coalesce(w.resends, 0) AS resends
FROM recent r
JOIN jobs j ON j.id = r.job_id
LEFT JOIN job_stages s ON s.job_id = j.id AND s.stage = $1
LEFT JOIN stage_sweeps w ON w.job_id = j.id AND w.stage = $1 AND w.generation = j.generation
WHERE j.cancelled_at IS NULL
  -- every prerequisite the job asks for is done for this run (the first stage has none;
  -- `switch` is the JobOptions field that asks for one, '' when every job runs it)
  AND NOT EXISTS (
      SELECT 1 FROM unnest($2::text[], $6::text[]) AS need(stage, switch)
      WHERE (need.switch = '' OR coalesce((j.options ->> need.switch)::boolean, false))
        AND NOT EXISTS (
          SELECT 1 FROM job_stages p WHERE p.job_id = j.id AND p.stage = need.stage
            AND p.state = 'done'))
  -- no stage of this run failed or was cancelled
  AND NOT EXISTS (
      SELECT 1 FROM job_stages f WHERE f.job_id = j.id
        AND f.state IN ('failed', 'cancelled'))
  AND (
      -- its worker stopped renewing the lease
      (s.state = 'running' AND s.lease_expires_at < now())
      -- or it never started, and nothing happened to the job for a while
      OR (s.job_id IS NULL
          AND coalesce((SELECT max(e.created_at) FROM job_events e WHERE e.job_id = j.id),
                       j.created_at) < now() - make_interval(secs => $3))
  )
  -- its input is not still waiting in the outbox
  AND NOT EXISTS (
      SELECT 1 FROM outbox o WHERE o.key = j.id::text AND o.topic = $5 AND o.sent_at IS NULL
        AND o.failed_at IS NULL)
  -- re-sends back off: stuck_after_s, then twice that, four times...
  AND (w.swept_at IS NULL
       OR w.swept_at < now() - make_interval(secs => $3 * power(2, least(w.resends, 10))))
ORDER BY j.created_at
LIMIT 100
FOR UPDATE OF j SKIP LOCKED
"""


@dataclass(frozen=True)
class SweepAction:
    job_id: uuid.UUID
    action: str  # "resent" | "failed" | "skipped"
    why: str


class StageSweeper:
    def __init__(
        self, pool: Pool, settings: CommonSettings, stage: Stage, pipeline: Pipeline = PIPELINE
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.stage = stage
        self.pipeline = pipeline
        self.topic = pipeline[stage].topic  # the stage's input topic
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep_once()
            except Exception as exc:  # database down: try again next round
                log.warning("sweep failed", stage=self.stage.value, error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.sweep_interval_s)

    def stop(self) -> None:
        self._stopping.set()

    async def sweep_once(self) -> list[SweepAction]:
        index = STAGE_ORDER.index(self.stage)
        prerequisites = [self.pipeline[s] for s in self.pipeline[self.stage].after]
        actions: list[SweepAction] = []
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1, $2)", _SWEEP_LOCK, index
            ):
                return actions  # another replica is sweeping this stage right now
            rows = await conn.fetch(
                _CANDIDATES,
                self.stage.value,
                [p.stage.value for p in prerequisites],
                self.settings.stuck_after_s,
                self.settings.sweep_window_s,
                self.topic,
                [p.requested_by or "" for p in prerequisites],
            )
            for row in rows:
                actions.append(await self._act(conn, row))
        for action in actions:
            SWEPT.labels(self.stage.value, action.action).inc()
            if action.action == "skipped":
                continue
            log.warning(
                "stage input re-sent" if action.action == "resent" else "stage given up",
                stage=self.stage.value,
                job_id=str(action.job_id),
                why=action.why,
            )
        return actions

    async def _act(self, conn: Connection, row: Record) -> SweepAction:
        job_id: uuid.UUID = row["id"]
        why: str = row["why"]
        job = JobRow(job_id, row["owner_id"], False, row["options"] or {}, row["generation"])
        if self.stage in self.pipeline.not_requested(JobOptions.model_validate(job.options)):
            # Queued before any stage started: nothing to send, the stage is done as is.
            await transitions.skip_not_requested(conn, job, job.generation, self.pipeline)
            return SweepAction(job_id, "skipped", "not requested by the job's options")
        event = await rebuild_stage_input(conn, job_id, self.stage, pipeline=self.pipeline)
        source = f"{self.settings.service_name}-sweeper"
        crash_loop = why == "lease expired" and row["attempts"] >= self.settings.max_stage_starts
        if event is None or crash_loop:
            reason = (
                f"{self.stage.value} was started {row['attempts']} times and its worker was"
                " lost each time (crashed or killed, e.g. out of memory on this audio)"
                if event is not None
                else f"{self.stage.value} cannot be re-sent: the earlier results are gone"
            )
            await transitions.fail(
                conn,
                job_id=job_id,
                owner_id=row["owner_id"],
                stage=self.stage,
                reason=reason,
                source=source,
                letter=None
                if event is None
                else transitions.Letter(
                    topic=self.topic,
                    headers=Envelope.for_event(event, source=source).to_headers(),
                    body=event.model_dump_json().encode(),
                    key=str(job_id),
                    consumer=source,
                    attempts=row["attempts"],
                    max_body_bytes=self.settings.max_event_bytes,
                ),
            )
            await self._record(conn, row, reason)
            return SweepAction(job_id, "failed", reason)
        await transitions.requeue(
            conn,
            job_id=job_id,
            owner_id=row["owner_id"],
            stage=self.stage,
            event=event,
            source=source,
            why=why,
            traceparent=await _job_trace(conn, job_id),
        )
        await self._record(conn, row, why)
        return SweepAction(job_id, "resent", why)

    async def _record(self, conn: Connection, row: Record, reason: str) -> None:
        await conn.execute(
            """INSERT INTO stage_sweeps (job_id, stage, generation, resends, swept_at, reason)
               VALUES ($1, $2, $3, 1, now(), $4)
               ON CONFLICT (job_id, stage, generation) DO UPDATE
               SET resends = stage_sweeps.resends + 1, swept_at = now(), reason = $4""",
            row["id"],
            self.stage.value,
            row["generation"],
            reason,
        )


async def _job_trace(conn: Connection, job_id: uuid.UUID) -> str | None:
    """The traceparent of the job's latest event still in the outbox, so that a re-send
    continues the job's trace instead of starting one of its own (None once pruned)."""
    value: str | None = await conn.fetchval(
        "SELECT headers->>'traceparent' FROM outbox"
        " WHERE key = $1 AND headers ? 'traceparent' ORDER BY id DESC LIMIT 1",
        str(job_id),
    )
    return value
