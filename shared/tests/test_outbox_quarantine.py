"""M1: an outbox row the broker can never take is quarantined (failed, with the producer's
error, counted) and never blocks its lane; the rows before it are published once."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from mxw_shared import metrics
from mxw_shared.outbox import OutboxRelay, enqueue_raw


async def test_m1_oversize_outbox_row_is_quarantined_and_its_lane_flows_on(infra, db, make_job):
    key = str(await make_job())  # one key: one lane, relayed in id order
    topic = f"quarantine-{uuid.uuid4().hex[:8]}"
    async with db.acquire() as conn, conn.transaction():
        await enqueue_raw(conn, topic, key, {"step": "before"}, b"before")
        await enqueue_raw(conn, topic, key, {"step": "huge"}, b"x" * (2 * 1024 * 1024))
    quarantined_before = metrics.OUTBOX_QUARANTINED.labels(topic)._value.get()

    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers, acks="all")
    await producer.start()
    relay = OutboxRelay(db, producer, poll_interval_s=0.1)
    try:
        while await relay.relay_once():
            pass
        # Written after the unpublishable row, in the same lane: it still leaves.
        async with db.acquire() as conn, conn.transaction():
            await enqueue_raw(conn, topic, key, {"step": "after"}, b"after")
        while await relay.relay_once():
            pass
    finally:
        await producer.stop()

    rows = await db.fetch(
        "SELECT headers ->> 'step' AS step, sent_at IS NOT NULL AS sent, failed_at, error"
        " FROM outbox WHERE topic = $1 ORDER BY id",
        topic,
    )
    assert [(r["step"], r["sent"], r["failed_at"] is not None) for r in rows] == [
        ("before", True, False),
        ("huge", False, True),
        ("after", True, False),
    ]
    assert rows[1]["error"].startswith("MessageSizeTooLargeError")
    assert metrics.OUTBOX_QUARANTINED.labels(topic)._value.get() == quarantined_before + 1
    await metrics.refresh_outbox(db)
    assert metrics.OUTBOX_QUARANTINED_ROWS._value.get() >= 1

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=infra.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        for _ in range(20):  # until two empty fetches follow what arrived
            batch = await consumer.getmany(timeout_ms=500)
            values += [r.value for records in batch.values() for r in records]
            if len(values) >= 2 and not batch:
                break
    finally:
        await consumer.stop()
    assert values == [b"before", b"after"]  # each once: "before" was not published again
