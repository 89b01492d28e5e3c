"""Dead letters: the copy of a record no consumer could handle, on `<topic>.dlq`, with the
reason; and the rule that tells an outage (keep retrying the record) from a record that
fails every time (count its failures, then dead-letter it).

Records come from anyone who can write to Kafka, so the copy is sanitised until it is always
storable and publishable: NUL removed from text (jsonb refuses `\\u0000`), header values that
are not UTF-8 text carried as base64, the body cut to `max_event_bytes`, header values and
the reason capped. A dead letter can therefore never become an outbox row that blocks its
lane (M1)."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass

import asyncpg

from mxw_shared import metrics
from mxw_shared.contracts import DeadLetter, header_items
from mxw_shared.db import Connection
from mxw_shared.outbox import enqueue_raw
from mxw_shared.topics import dlq

MAX_REASON_CHARS = 4000
MAX_HEADER_CHARS = 1024  # per copied header value
MAX_HEADERS = 64  # copied headers of the original record
BASE64_PREFIX = "base64:"
# SQLSTATE classes of an outage, not of a record: connection (08), transaction rollback
# such as deadlock or serialization (40), insufficient resources (53), operator
# intervention: shutdown, cannot connect now, statement timeout (57), system I/O (58).
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})


def clean_text(value: str, limit: int | None = None) -> str:
    """`value` without NUL characters, at most `limit` characters."""
    text = value.replace("\x00", "")
    return text if limit is None else text[:limit]


def _is_text(raw: bytes) -> bool:
    try:
        return "\x00" not in raw.decode("utf-8")
    except UnicodeDecodeError:
        return False


def _header_value(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
    else:
        raw = str(value).encode(errors="surrogatepass")
    if _is_text(raw):
        return raw.decode("utf-8")[:MAX_HEADER_CHARS]
    return (BASE64_PREFIX + base64.b64encode(raw).decode())[:MAX_HEADER_CHARS]


def dlq_headers(
    raw_headers: object, *, reason: str, consumer: str, attempts: int, original_topic: str
) -> dict[str, str]:
    """The original headers, sanitised, plus the x_* headers that say why the record is
    here (they replace any the record brought). Header values with a NUL or bytes that are
    not UTF-8 are kept as `base64:…`."""
    copied: dict[str, str] = {}
    try:
        items = header_items(raw_headers)
    except Exception:  # headers of an unknown shape: the reason says what is known
        items = []
    for key, value in items[:MAX_HEADERS]:
        if name := clean_text(str(key), 255):
            copied[name] = _header_value(value)
    why = DeadLetter(
        original_topic=original_topic,
        error=clean_text(reason, MAX_REASON_CHARS),
        consumer=clean_text(consumer, 255),
        attempts=attempts,
    )
    return {**copied, **why.to_headers()}


def record_key(key: bytes | str | None, body: bytes) -> str:
    """The DLQ record's key: the original one, else the job id found in the body."""
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    if key and (cleaned := clean_text(key, 255)):
        return cleaned
    try:
        value = json.loads(body)
        job_id = value.get("job_id", "unknown") if isinstance(value, dict) else "unknown"
    except Exception:  # not JSON, nested too deep, not text: there is no job id to find
        return "unknown"
    return clean_text(str(job_id), 255) or "unknown"


async def dead_letter(
    conn: Connection,
    *,
    topic: str,
    raw_headers: object,
    body: bytes,
    key: bytes | str | None,
    reason: str,
    consumer: str,
    attempts: int,
    max_body_bytes: int,
) -> None:
    """Write the dead letter of a record of `topic` to the outbox, in the caller's
    transaction. A body over `max_body_bytes` is cut, its size kept in `x_body_bytes`."""
    headers = dlq_headers(
        raw_headers, reason=reason, consumer=consumer, attempts=attempts, original_topic=topic
    )
    if len(body) > max_body_bytes:
        headers[DeadLetter.HEADERS["body_bytes"]] = str(len(body))
        body = body[:max_body_bytes]
    await enqueue_raw(conn, dlq(topic), record_key(key, body), headers, body)
    metrics.DLQ_EVENTS.labels(topic).inc()


def is_outage(exc: BaseException) -> bool:
    """True for errors of the infrastructure (database or broker unreachable, shutting down,
    overloaded): the record itself is fine and is retried until the outage ends. Anything
    else fails the same way on every attempt."""
    if isinstance(exc, OSError | asyncio.TimeoutError | asyncpg.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, ValueError):
        return True  # connection closed mid-operation, pool closing (not: a bad argument)
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")[:2] in _OUTAGE_SQLSTATE_CLASSES
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    return isinstance(exc, KafkaConnectionError | KafkaTimeoutError)


@dataclass
class _Failures:
    offset: int
    count: int


class FailureCounter:
    """Failures of the record in hand, per partition: a consumer handles one record of a
    partition at a time and meets it again right after rewinding, so one entry per
    partition is enough, and it is forgotten once another offset of it is handled."""

    def __init__(self) -> None:
        self._by_partition: dict[object, _Failures] = {}

    def failed(self, partition: object, offset: int) -> int:
        """Count one more failure of the record at `offset`; returns its failures so far."""
        entry = self._by_partition.get(partition)
        if entry is None or entry.offset != offset:
            entry = self._by_partition[partition] = _Failures(offset, 0)
        entry.count += 1
        return entry.count

    def forget(self, partition: object) -> None:
        self._by_partition.pop(partition, None)
