"""Pure rules: resume points, tokens, ownership, and the non-blocking fan-out."""

import asyncio
import uuid
from datetime import UTC, datetime

from mxw_notifier.domain import (
    HistoryEntry,
    StatusMessage,
    may_watch,
    select_history,
    websocket_credentials,
)
from mxw_notifier.fanout import JobFanout
from mxw_shared.auth import Principal

JOB = uuid.uuid4()


def status(event_id: str, state: str = "running", job_id: uuid.UUID = JOB) -> StatusMessage:
    return StatusMessage(
        event_id=event_id,
        job_id=job_id,
        stage="transcribe",
        state=state,
        progress=0.5,
        message=None,
        error=None,
        time=datetime.now(UTC),
    )


HISTORY = [
    HistoryEntry(11, status("a")),
    HistoryEntry(12, status("b")),
    HistoryEntry(15, status("c", "done")),
]


def test_history_resumes_after_a_row_id_or_an_event_id() -> None:
    assert [s.event_id for s in select_history(HISTORY, None).to_send] == ["a", "b", "c"]
    assert [s.event_id for s in select_history(HISTORY, "11").to_send] == ["b", "c"]
    assert [s.event_id for s in select_history(HISTORY, "13").to_send] == ["c"]
    assert [s.event_id for s in select_history(HISTORY, "b").to_send] == ["c"]
    assert select_history(HISTORY, "15").to_send == []
    # An unknown event id cannot be placed: everything, the client de-duplicates.
    assert len(select_history(HISTORY, "zzz").to_send) == 3


def test_history_knows_every_event_id_and_whether_the_job_ended() -> None:
    view = select_history(HISTORY, "b")
    assert view.seen == {"a", "b", "c"}
    assert view.finished
    assert not select_history(HISTORY[:2], None).finished


def test_a_job_reprocessed_after_done_is_live_again() -> None:
    rerun = [*HISTORY, HistoryEntry(16, status("d", "queued"))]
    assert select_history(rerun, None).finished is False
    assert select_history([*rerun, HistoryEntry(20, status("e", "done"))], None).finished


def test_only_owner_or_admin_may_watch() -> None:
    alice = Principal(sub="alice", is_admin=False)
    admin = Principal(sub="root", is_admin=True)
    assert may_watch(alice, "alice")
    assert not may_watch(alice, "bob")
    assert may_watch(admin, "bob")
    assert not may_watch(admin, None)


def test_token_sources_and_subprotocol_echo() -> None:
    creds = websocket_credentials("q", "Bearer h", ["bearer.p"])
    assert creds.token == "q"
    assert websocket_credentials(None, "Bearer h", []).token == "h"
    assert websocket_credentials(None, "Basic h", []).token is None
    creds = websocket_credentials(None, None, ["bearer.p"])
    assert (creds.token, creds.subprotocol) == ("p", "bearer.p")
    creds = websocket_credentials(None, None, ["bearer.p", "mxw.v1"])
    assert (creds.token, creds.subprotocol) == ("p", "mxw.v1")
    # Only the first sub-protocol may carry the token.
    assert websocket_credentials(None, None, ["mxw.v1", "bearer.p"]).token is None


async def test_a_full_queue_drops_that_watcher_only() -> None:
    fanout = JobFanout(queue_size=2)
    slow = fanout.subscribe(JOB)
    fast = fanout.subscribe(JOB)
    other_job = fanout.subscribe(uuid.uuid4())
    received: list[str] = []
    for i in range(5):
        fanout.publish(status(f"e{i}"))
        received.append((await asyncio.wait_for(fast.get(), 1)).event_id)

    assert received == ["e0", "e1", "e2", "e3", "e4"]
    assert slow.dropped.is_set()
    assert not fast.dropped.is_set()
    assert fanout.watchers(JOB) == 1
    assert other_job.queue.empty()
    assert fanout.dropped_total == 1
