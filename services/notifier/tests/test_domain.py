"""Pure rules: resume points, seq placement, tokens, ownership, the coalescing queue, the
non-blocking fan-out, and the webhook rules (signatures, backoff, disabling, targets)."""

import ipaddress
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mxw_notifier.domain import (
    ClientQueue,
    CloseCode,
    FellBehind,
    StatusMessage,
    credentials,
    may_watch,
    parse_after,
    parse_resume,
    place,
    select_history,
)
from mxw_notifier.fanout import Hub, Subscriber
from mxw_notifier.repository import status_message
from mxw_notifier.webhook_domain import (
    backoff_s,
    body_of,
    event_type,
    job_event_payload,
    should_disable,
    signature_header,
)
from mxw_shared.auth import Principal
from mxw_shared.netguard import BadUrl, parse_networks, parse_target, refusal
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

JOB = uuid.uuid4()
ALICE = Principal(sub="alice", is_admin=False)


def status(
    seq: int | None, state: str = "running", job_id: uuid.UUID = JOB, owner: str = "alice"
) -> StatusMessage:
    return StatusMessage(
        event_id=f"e{seq}",
        job_id=job_id,
        seq=seq,
        stage="transcribe",
        state=state,
        progress=0.5,
        message=None,
        error=None,
        time=datetime.now(UTC),
        owner_id=owner,
    )


HISTORY = [status(1), status(2), status(3, "done")]


def test_history_resumes_after_a_seq_and_knows_whether_the_job_ended() -> None:
    assert [s.seq for s in select_history(HISTORY, 0).to_send] == [1, 2, 3]
    assert [s.seq for s in select_history(HISTORY, 2).to_send] == [3]
    assert select_history(HISTORY, 3).to_send == []
    view = select_history(HISTORY, 1)
    assert (view.latest_seq, view.finished) == (3, True)
    assert not select_history(HISTORY[:2], 0).finished
    # A job reprocessed after done is live again: the latest event decides.
    assert not select_history([*HISTORY, status(4, "queued")], 0).finished
    assert select_history([], 0) == select_history([], 0)
    assert select_history([], 0).latest_seq == 0


def test_after_and_resume_parameters() -> None:
    assert parse_after(None) == parse_after("") == 0
    assert parse_after("17") == 17
    for bad in ("-1", "x", "1.5", "9" * 11):
        with pytest.raises(ValueError, match="sequence number"):
            parse_after(bad)
    a, b = uuid.uuid4(), uuid.uuid4()
    assert parse_resume(f"{a}:3,{b}:0", 10) == {a: 3, b: 0}
    assert parse_resume(f"{a}:3,{a}:5", 10) == {a: 5}
    assert parse_resume(None, 10) == {}
    for bad, why in ((f"{a}", "<job id>:<seq>"), ("nope:1", "not a job id"), (f"{a}:x", "seq")):
        with pytest.raises(ValueError, match=why):
            parse_resume(bad, 10)
    with pytest.raises(ValueError, match="more than 1"):
        parse_resume(f"{a}:1,{b}:1", 1)


def test_live_events_are_placed_by_seq() -> None:
    assert place(status(5), None).send  # the first live event of a job starts the feed
    assert not place(status(3), 3).send  # duplicate
    assert not place(status(2), 3).send  # older than what was sent
    assert place(status(4), 3) == place(status(4), 3).__class__(send=True)
    gap = place(status(7), 3)
    assert (gap.send, gap.fill_after, gap.fill_before) == (True, 3, 7)
    # A coalesced event jumps on purpose: no fill.
    coalesced = StatusMessage(**{**status(7).__dict__, "coalesced": True})
    assert place(coalesced, 3).fill_after is None
    # An event without seq (another system published it) only triggers a read of history.
    unnumbered = place(status(None), 3)
    assert (unnumbered.send, unnumbered.fill_after, unnumbered.fill_before) == (False, 3, None)
    assert place(status(None), None).send is False


def test_only_owner_or_admin_may_watch() -> None:
    admin = Principal(sub="root", is_admin=True)
    assert may_watch(ALICE, "alice")
    assert not may_watch(ALICE, "bob")
    assert may_watch(admin, "bob")
    assert not may_watch(admin, None)


def test_token_sources_and_subprotocol_echo() -> None:
    # The header wins, then the sub-protocol, then the query parameter.
    assert credentials("q", "Bearer h", ["bearer.p"]).token == "h"
    assert credentials("q", None, ["bearer.p"]).token == "p"
    assert credentials("q", "Basic h", []).token == "q"
    assert credentials(None, None, []).token is None
    found = credentials(None, None, ["bearer.p"])
    assert (found.token, found.subprotocol) == ("p", "bearer.p")
    found = credentials(None, None, ["bearer.p", "mxw.v1"])
    assert (found.token, found.subprotocol) == ("p", "mxw.v1")
    # The two-protocol convention: "bearer", then the token; "bearer" is echoed.
    found = credentials(None, None, ["bearer", "tok"])
    assert (found.token, found.subprotocol) == ("tok", "bearer")
    assert credentials(None, None, ["mxw.v1"]).subprotocol == "mxw.v1"


def test_close_codes_are_distinct_and_documented() -> None:
    codes = [c.value for c in CloseCode]
    assert len(codes) == len(set(codes))
    assert CloseCode.UNAUTHORIZED == 4401
    assert CloseCode.NOT_FOUND == 4404
    assert CloseCode.TOO_SLOW == 4408
    assert CloseCode.TOO_MANY == 4429
    text = (Path(__file__).parents[3] / "docs" / "notifier.md").read_text()
    for code in CloseCode:
        assert f"`{code.value}`" in text, code


def test_queue_keeps_order_then_coalesces_per_job_then_gives_up() -> None:
    queue = ClientQueue(capacity=3, max_behind_s=60)
    other = uuid.uuid4()
    for message in (status(1), status(2), status(1, job_id=other)):
        queue.offer(message, now=0)
    assert [m.seq for m in queue.take_all()] == [1, 2, 1]  # under capacity: every event

    for message in (status(1), status(2), status(1, job_id=other), status(3, "done")):
        queue.offer(message, now=0)
    kept = queue.take_all()
    # Over capacity: the latest of each job, in the order of their latest events.
    assert [(m.job_id, m.seq, m.coalesced) for m in kept] == [(other, 1, False), (JOB, 3, True)]
    assert kept[-1].state == "done"  # the terminal state is never lost

    for _ in range(3):
        queue.offer(status(1, job_id=uuid.uuid4()), now=0)
    with pytest.raises(FellBehind, match="more than 3 jobs"):
        queue.offer(status(1, job_id=uuid.uuid4()), now=0)


def test_queue_gives_up_on_a_client_behind_for_too_long() -> None:
    queue = ClientQueue(capacity=100, max_behind_s=5)
    queue.offer(status(1), now=0)
    queue.offer(status(2), now=4)
    with pytest.raises(FellBehind, match="5 s"):
        queue.offer(status(3), now=6)


async def test_a_fallen_behind_feed_is_dropped_and_others_keep_getting_events() -> None:
    hub = Hub()
    # alice's feed of all her jobs that never reads: events of many jobs cannot coalesce.
    slow = Subscriber(ALICE, job_id=None, everything=False, capacity=2, max_behind_s=60)
    fast = Subscriber(ALICE, job_id=JOB, everything=False, capacity=2, max_behind_s=60)
    mine = Subscriber(ALICE, job_id=None, everything=False, capacity=16, max_behind_s=60)
    bobs = Subscriber(
        Principal(sub="bob", is_admin=False), job_id=None, everything=False, capacity=8,
        max_behind_s=60,
    )  # fmt: skip
    admin_all = Subscriber(
        Principal(sub="root", is_admin=True), job_id=None, everything=True, capacity=16,
        max_behind_s=60,
    )  # fmt: skip
    for s in (slow, fast, mine, bobs, admin_all):
        hub.add(s)
    received: list[int | None] = []
    for i in range(1, 6):
        # Three jobs' worth of events would coalesce; distinct jobs overflow the slow feed.
        hub.publish(status(i, job_id=JOB))
        hub.publish(status(i, job_id=uuid.uuid4(), owner="alice"))
        received += [m.seq for m in await fast.next_batch(1)]
    assert received == [1, 2, 3, 4, 5]
    assert slow.dropped.is_set()
    assert not fast.dropped.is_set()
    with pytest.raises(FellBehind):
        await slow.next_batch(1)
    assert hub.dropped_total == 1
    assert len(await mine.next_batch(1)) == 10  # every event of every job of alice's
    assert await bobs.next_batch(0.01) == []
    assert len(await admin_all.next_batch(1)) == 10
    assert hub.open_feeds == 4
    hub.remove(mine)
    hub.remove(fast)
    assert hub.open_feeds == 2
    assert hub.watchers(JOB) == 0


def test_webhook_events_body_and_signatures_verify_with_the_library() -> None:
    assert (event_type("done"), event_type("failed"), event_type("running")) == (
        "job.done",
        "job.failed",
        None,
    )
    payload = job_event_payload("job.done", status(9, "done"), "a.wav")
    assert payload["type"] == "job.done"
    assert payload["data"]["seq"] == 9
    body = body_of(payload)
    new, old = "whsec_" + "A" * 32, "whsec_" + "B" * 32
    at = datetime.now(UTC)
    header = signature_header([new, old], "msg_1", at, body)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": header,
    }
    # During a rotation either secret verifies; a third does not, nor a changed body.
    assert Webhook(new).verify(body, headers)["data"]["filename"] == "a.wav"
    assert Webhook(old).verify(body, headers)["type"] == "job.done"
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "C" * 32).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body.replace("a.wav", "b.wav"), headers)


def test_backoff_doubles_with_bounded_jitter_and_a_cap() -> None:
    assert [backoff_s(n, 5, 3600, 0) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff_s(20, 5, 3600, 0) == 3600
    assert backoff_s(1, 5, 3600, 1) == pytest.approx(6)
    assert backoff_s(1, 5, 3600, -5) == pytest.approx(4)


def test_disabling_needs_both_many_failures_and_time() -> None:
    assert should_disable(20, 86400, 20, 86400)
    assert not should_disable(19, 10**6, 20, 86400)
    assert not should_disable(100, 3600, 20, 86400)


def test_targets_private_addresses_are_refused_unless_allowed() -> None:
    ip = ipaddress.ip_address
    public = [ip("93.184.216.34")]
    assert refusal("h", public, False, []) is None
    for private in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "::ffff:10.0.0.1"):
        assert refusal("h", [ip(private)], False, []) is not None, private
    # Every address must pass: one private answer among public ones is refused.
    assert refusal("h", [*public, ip("192.168.1.1")], False, []) is not None
    assert refusal("h", [ip("127.0.0.1")], False, parse_networks(["127.0.0.1/32"])) is None
    assert refusal("h", [ip("127.0.0.2")], False, parse_networks(["127.0.0.1/32"])) is not None
    assert refusal("h", [ip("10.0.0.1")], True, []) is None
    assert refusal("h", [], True, []) is not None


def test_l2_after_is_bounded_by_the_integer_seq_column():
    assert parse_after("2147483647") == 2147483647
    for bad in ("2147483648", "9999999999", "٣", "-1", "1e3"):
        with pytest.raises(ValueError, match="2147483647"):
            parse_after(bad)
    with pytest.raises(ValueError, match="2147483647"):
        parse_resume(f"{uuid.uuid4()}:2147483648", max_jobs=10)


def test_a_target_of_another_scheme_is_refused_as_one_that_cannot_be_called() -> None:
    # The words the delivery attempt records (the gateway's registration uses the same).
    with pytest.raises(BadUrl) as refused:
        parse_target("ftp://example.org/hook", 100, purpose="webhook")
    assert str(refused.value) == "only http and https URLs can be called"


def test_a_job_events_row_is_the_status_message_feeds_and_webhooks_send() -> None:
    at = datetime(2026, 12, 3, 7, 40, tzinfo=UTC)
    row = {
        "job_id": JOB, "seq": 7, "event_id": "ev-7", "stage": "embed", "state": "done",
        "progress": 0.999996, "message": "embedded", "error": None, "created_at": at,
        "owner_id": "alice", "filename": "talk.ogg",  # other columns a query selects
    }  # fmt: skip
    assert status_message(row) == StatusMessage(
        event_id="ev-7", job_id=JOB, seq=7, stage="embed", state="done", progress=1.0,
        message="embedded", error=None, time=at,
    )  # fmt: skip
