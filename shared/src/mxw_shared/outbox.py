"""Transactional outbox: events are rows written in the same transaction as the state change
they announce; a relay publishes them to Kafka and marks them sent once the broker acked.

Every service process relays. Rows fall into LANES lanes by a hash of their key (the job
id); one relay at a time publishes a lane (a transaction-scoped advisory lock per lane, the
rows claimed FOR UPDATE SKIP LOCKED), so several replicas relay in parallel while the events
of one job still leave in the order they were written.

A row the broker can never take (larger than its record limit, an invalid topic) is
quarantined: marked failed with the producer's error, counted, and skipped, so it cannot
hold back the rows behind it in its lane (M1).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from prometheus_client import Counter

from mxw_shared import metrics
from mxw_shared.contracts import Envelope, EventData
from mxw_shared.db import Connection, Pool
from mxw_shared.locks import OUTBOX_RELAY_LANE as _RELAY_LOCK
from mxw_shared.logging import get_logger
from mxw_shared.telemetry import current_traceparent, publish_context

log = get_logger(__name__)
LANES = 8  # a power of two; the outbox_unsent_lane index uses the same expression
RELAYED = Counter("mxw_outbox_relayed_total", "Outbox rows published to Kafka", ["topic"])
# Errors about the record itself: sending it again can never succeed. Anything else (broker
# unreachable, timeouts, producer closing) leaves the row for the next round.
UNPUBLISHABLE = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    CorruptRecordException,
    TypeError,
    ValueError,
)


async def enqueue(
    conn: Connection, data: EventData, source: str, traceparent: str | None = None
) -> Envelope:
    """Add `data` to the outbox inside the caller's transaction; returns its envelope. The
    row carries the active span's traceparent (else the given one): the event continues the
    trace of the work that wrote it, whenever and wherever the relay publishes it."""
    traceparent = current_traceparent() or traceparent
    envelope = Envelope.for_event(data, source=source, traceparent=traceparent)
    await enqueue_raw(
        conn, data.topic, str(data.job_id), envelope.to_headers(), data.model_dump_json().encode()
    )
    return envelope


async def enqueue_raw(
    conn: Connection, topic: str, key: str, headers: dict[str, str], payload: bytes
) -> None:
    await conn.execute(
        "INSERT INTO outbox (topic, key, headers, payload) VALUES ($1, $2, $3, $4)",
        topic,
        key,
        headers,
        payload,
    )


class OutboxRelay:
    def __init__(
        self,
        pool: Pool,
        producer: AIOKafkaProducer,
        poll_interval_s: float = 1.0,
        batch_size: int = 200,
        retain_sent_s: float = 3600.0,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._retain_sent_s = retain_sent_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._listener: Connection | None = None

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Relay until stopped; survives broker and database outages by retrying."""
        await self._listen()
        rounds = 0
        while not self._stopping:
            try:
                sent = await self.relay_once()
                rounds += 1
                if rounds % 600 == 0:
                    await self._prune()
            except Exception as exc:  # keep relaying through broker and database outages
                log.warning("outbox relay round failed", error=repr(exc))
                sent = 0
                await asyncio.sleep(self._poll_interval_s)
            if sent < self._batch_size:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)

    async def _listen(self) -> None:
        try:
            self._listener = await self._pool.acquire()
            await self._listener.add_listener("outbox", self._on_notify)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("outbox LISTEN unavailable, polling only", error=repr(exc))

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows from each lane that has some; returns how many
        were sent. Lanes another relay holds right now are skipped."""
        lanes = [
            r["lane"]
            for r in await self._pool.fetch(
                "SELECT DISTINCT hashtext(key) & $1 AS lane FROM outbox"
                " WHERE sent_at IS NULL AND failed_at IS NULL",
                LANES - 1,
            )
        ]
        random.shuffle(lanes)  # replicas start on different lanes
        sent = 0
        for lane in lanes:
            sent += await self._relay_lane(lane)
        return sent

    async def _relay_lane(self, lane: int) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1, $2)", _RELAY_LOCK, lane
            ):
                return 0
            rows = await conn.fetch(
                "SELECT id, topic, key, headers, payload FROM outbox"
                " WHERE sent_at IS NULL AND failed_at IS NULL AND hashtext(key) & $2 = $3"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch_size,
                LANES - 1,
                lane,
            )
            if not rows:
                return 0
            sending: list[tuple[asyncpg.Record, asyncio.Future[object]]] = []
            failed: list[tuple[asyncpg.Record, BaseException]] = []
            for row in rows:
                try:
                    sending.append((row, await self._send(row)))
                except UNPUBLISHABLE as exc:  # refused before it left (aiokafka checks size)
                    failed.append((row, exc))
                except Exception as exc:  # the broker or the producer is in trouble
                    log.warning("outbox send failed; the rest next round", error=repr(exc))
                    break
            acks = await asyncio.gather(*(f for _, f in sending), return_exceptions=True)
            sent = []
            for (row, _), ack in zip(sending, acks, strict=True):
                if isinstance(ack, UNPUBLISHABLE):
                    failed.append((row, ack))
                elif isinstance(ack, BaseException):
                    # Not acked: it and the rows after it (same lane, order) go again.
                    log.warning("outbox row not acked; sent again", error=repr(ack))
                    break
                else:
                    sent.append(row)
            # The rows acked before the first failure are sent for good: never published again.
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                [r["id"] for r in sent],
            )
            for row, error in failed:
                await self._quarantine(conn, row, error)
            for row in sent:
                RELAYED.labels(row["topic"]).inc()
            return len(sent) + len(failed)

    async def _send(self, row: asyncpg.Record) -> asyncio.Future[object]:
        value = bytes(row["payload"])
        with publish_context(row["headers"]) as headers:  # the send span joins its trace
            future: asyncio.Future[object] = await self._producer.send(
                row["topic"], value=value, key=row["key"].encode(), headers=headers
            )
        return future

    async def _quarantine(self, conn: Connection, row: asyncpg.Record, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}".replace("\x00", "")[:4000]
        await conn.execute(
            "UPDATE outbox SET failed_at = now(), error = $2 WHERE id = $1", row["id"], error
        )
        metrics.OUTBOX_QUARANTINED.labels(row["topic"]).inc()
        log.error(
            "outbox row cannot be published; quarantined",
            outbox_id=row["id"],
            topic=row["topic"],
            bytes=len(row["payload"]),
            error=error[:500],
        )

    async def _prune(self) -> None:
        await self._pool.execute(
            "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => $1)",
            self._retain_sent_s,
        )

    async def stop(self) -> None:
        """Flush what is pending, then stop."""
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(Exception):
            while await self.relay_once():
                pass
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener("outbox", self._on_notify)
            await self._pool.release(self._listener)
            self._listener = None
