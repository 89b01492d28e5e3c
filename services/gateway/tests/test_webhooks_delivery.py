"""Webhooks end to end: endpoints registered at the gateway, a job's terminal status written
the way the stages write it (relayed by the gateway's outbox), delivered by a real notifier
to a local receiver that verifies every signature with the `standardwebhooks` library."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from mxw_local.infra import free_port
from mxw_notifier.main import create_app as create_notifier
from mxw_notifier.main import server_config
from mxw_notifier.settings import NotifierSettings
from mxw_shared.contracts import JobState, Stage
from mxw_shared.jobs import record_status
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ALLOWED = ["127.0.0.1/32"]


@dataclass
class Received:
    headers: dict[str, str]
    body: str
    answered: int


@dataclass
class Receiver:
    """A local webhook receiver: /hook/{name} answers 500 to the first `fail_first[name]`
    requests of each message id, then 200."""

    base: str = ""
    fail_first: dict[str, int] = field(default_factory=dict)
    received: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))

    async def hook(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = (await request.body()).decode()
        msg_id = request.headers.get("webhook-id", "")
        earlier = [r for r in self.received[name] if r.headers.get("webhook-id") == msg_id]
        status = 500 if len(earlier) < self.fail_first.get(name, 0) else 200
        self.received[name].append(Received(dict(request.headers), body, status))
        return Response("nope" if status == 500 else "ok", status_code=status)

    async def wait(self, name: str, count: int, timeout_s: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(self.received[name]) < count:
            assert time.monotonic() < deadline, f"{name}: {self.received[name]}"
            await asyncio.sleep(0.05)
        return self.received[name]


def verify(secret: str, received: Received) -> dict:
    """What a receiver does: verify with the Standard Webhooks library, or raise."""
    return Webhook(secret).verify(received.body, received.headers)


@contextlib.asynccontextmanager
async def serve(app, port: int, config: uvicorn.Config | None = None):
    server = uvicorn.Server(
        config or uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 90
    while not server.started:
        assert not task.done(), "server stopped while starting"
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


@pytest.fixture(scope="module")
async def stack(infra, start_gateway):
    """Receiver, notifier (fast retries, disabling after 3 failures) and gateway."""
    receiver = Receiver()
    receiver_port = free_port()
    receiver.base = f"http://127.0.0.1:{receiver_port}"
    receiver_app = Starlette(routes=[Route("/hook/{name}", receiver.hook, methods=["POST"])])

    port = free_port()
    settings = infra.settings(
        NotifierSettings,
        "notifier",
        host="127.0.0.1",
        port=port,
        webhook_allowed_networks=ALLOWED,
        webhook_poll_interval_s=0.1,
        webhook_backoff_base_s=0.2,
        webhook_max_attempts=4,
        webhook_disable_after_failures=3,
        webhook_disable_after_s=0,
        webhook_timeout_s=5,
    )
    notifier_app = create_notifier(settings)
    async with (
        serve(receiver_app, receiver_port),
        serve(notifier_app, port, server_config(notifier_app, settings)),
        # The gateway checks registrations against the same networks the notifier allows.
        start_gateway(webhook_allowed_networks=ALLOWED) as gateway,
    ):
        async with httpx.AsyncClient() as probe:
            deadline = time.monotonic() + 90
            while (await probe.get(f"http://127.0.0.1:{port}/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "notifier never became ready"
                await asyncio.sleep(0.1)
        yield gateway, receiver


async def register(gateway, headers, receiver: Receiver, name: str, **body) -> dict:
    response = await gateway.post(
        "/webhooks", headers=headers, json={"url": f"{receiver.base}/hook/{name}", **body}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def finish(db, job_id: uuid.UUID, state: JobState) -> str:
    """The job's final status, written as the embed stage writes it; the gateway's outbox
    relay publishes it. Returns the status event id."""
    async with db.acquire() as conn, conn.transaction():
        owner = await conn.fetchval("SELECT owner_id FROM jobs WHERE id = $1", job_id)
        envelope = await record_status(
            conn, job_id=job_id, owner_id=owner, stage=Stage.embed, state=state,
            progress=1.0, source="tests", error="boom" if state == JobState.failed else None,
        )  # fmt: skip
    return envelope.id


async def attempts(gateway, headers, webhook_id: str) -> list[dict]:
    response = await gateway.get(f"/webhooks/{webhook_id}/attempts", headers=headers)
    assert response.status_code == 200
    return response.json()["items"]


async def test_signed_delivery_succeeds_on_the_third_attempt_and_attempts_are_listed(
    stack, token, make_job, db
):
    gateway, receiver = stack
    headers = token("wh-flaky")
    endpoint = await register(gateway, headers, receiver, "flaky")
    cancelled_only = await register(
        gateway, headers, receiver, "cancelled-only", event_types=["job.cancelled"]
    )
    receiver.fail_first["flaky"] = 2
    job_id = await make_job("wh-flaky")
    event_id = await finish(db, job_id, JobState.done)

    calls = await receiver.wait("flaky", 3)
    assert [c.answered for c in calls] == [500, 500, 200]
    payloads = [verify(endpoint["secret"], c) for c in calls]  # every attempt is signed
    assert {c.headers["webhook-id"] for c in calls} == {f"msg_{event_id}"}
    assert payloads[-1]["type"] == "job.done"
    assert payloads[-1]["data"]["job_id"] == str(job_id)
    assert payloads[-1]["data"]["state"] == "done"
    assert payloads[-1]["data"]["seq"] == 1
    with pytest.raises(WebhookVerificationError):  # another endpoint's secret does not verify
        verify(cancelled_only["secret"], calls[-1])

    listed: list[dict] = []
    deadline = time.monotonic() + 10
    while len(listed) < 3 or listed[0]["delivery_state"] != "delivered":
        assert time.monotonic() < deadline, listed
        listed = await attempts(gateway, headers, endpoint["id"])
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in listed] == [
        (3, "delivered", 200), (2, "failed", 500), (1, "failed", 500),
    ]  # fmt: skip
    assert listed[1]["response_excerpt"] == "nope"
    assert listed[0]["job_id"] == str(job_id)
    assert all(a["duration_ms"] >= 0 for a in listed)
    view = (await gateway.get(f"/webhooks/{endpoint['id']}", headers=headers)).json()
    assert (view["active"], view["consecutive_failures"]) == (True, 0)
    assert view["last_success_at"] is not None
    # The endpoint that asked only for job.cancelled got nothing.
    assert receiver.received["cancelled-only"] == []


async def test_test_delivery_is_signed_with_both_secrets_after_a_rotation(stack, token):
    gateway, receiver = stack
    headers = token("wh-test")
    endpoint = await register(gateway, headers, receiver, "test-me")
    rotated = await gateway.post(f"/webhooks/{endpoint['id']}/rotate-secret", headers=headers)
    test = await gateway.post(f"/webhooks/{endpoint['id']}/test", headers=headers)
    assert test.status_code == 202
    (call,) = await receiver.wait("test-me", 1)
    assert call.headers["webhook-id"] == test.json()["message_id"]
    # A receiver still on the old secret and one already on the new one both verify.
    for secret in (endpoint["secret"], rotated.json()["secret"]):
        payload = verify(secret, call)
        assert payload["type"] == "webhook.test"
        assert payload["data"]["endpoint_id"] == endpoint["id"]
    assert len(call.headers["webhook-signature"].split(" ")) == 2


async def test_an_endpoint_that_keeps_failing_is_disabled_and_can_be_enabled_again(
    stack, token, make_job, db
):
    gateway, receiver = stack
    headers = token("wh-down")
    endpoint = await register(gateway, headers, receiver, "down")
    receiver.fail_first["down"] = 10**6
    await finish(db, await make_job("wh-down"), JobState.failed)

    deadline = time.monotonic() + 30
    while True:
        view = (await gateway.get(f"/webhooks/{endpoint['id']}", headers=headers)).json()
        if not view["active"]:
            break
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.1)
    assert view["enabled"] is True  # the owner's switch is untouched
    assert "3 failed attempts in a row" in view["disabled_reason"]
    assert view["consecutive_failures"] == 3
    listed = await attempts(gateway, headers, endpoint["id"])
    assert [a["outcome"] for a in listed] == ["failed"] * 3
    state = await db.fetchval(
        "SELECT state || ':' || last_error FROM webhook_deliveries WHERE endpoint_id = $1",
        uuid.UUID(endpoint["id"]),
    )
    assert state == "failed:endpoint disabled"  # no fourth attempt
    assert len(receiver.received["down"]) == 3

    again = await gateway.patch(
        f"/webhooks/{endpoint['id']}", headers=headers, json={"enabled": True}
    )
    assert (again.json()["active"], again.json()["consecutive_failures"]) == (True, 0)
    assert again.json()["disabled_reason"] is None


async def test_private_targets_are_refused_at_delivery_time(stack, token, make_job, db):
    """An endpoint whose address became private (DNS changed after registration): the
    notifier checks before each attempt and records a refusal instead of calling it."""
    gateway, receiver = stack
    headers = token("wh-rebind")
    endpoint = await register(gateway, headers, receiver, "rebind")
    await db.execute(
        "UPDATE webhook_endpoints SET url = 'http://169.254.169.254/latest' WHERE id = $1",
        uuid.UUID(endpoint["id"]),
    )
    await finish(db, await make_job("wh-rebind"), JobState.done)
    deadline = time.monotonic() + 30
    while not (listed := await attempts(gateway, headers, endpoint["id"])):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert listed[0]["outcome"] == "refused"
    assert "169.254.169.254" in listed[0]["error"]
    assert "not a public address" in listed[0]["error"]


async def test_info_webhook_secret_column_never_holds_the_plaintext(stack, token, db):
    gateway, receiver = stack
    headers = token("wh-sealed")
    endpoint = await register(gateway, headers, receiver, "sealed")
    rotated = await gateway.post(f"/webhooks/{endpoint['id']}/rotate-secret", headers=headers)
    row = await db.fetchrow(
        "SELECT secret, previous_secret FROM webhook_endpoints WHERE id = $1",
        uuid.UUID(endpoint["id"]),
    )
    plaintexts = (endpoint["secret"], rotated.json()["secret"])
    for stored in row.values():
        assert not stored.startswith("whsec_")
        for plaintext in plaintexts:
            assert plaintext not in stored
            assert plaintext.removeprefix("whsec_") not in stored
    # Sealed, yet a delivery verifies with the plaintext the user was given.
    test = await gateway.post(f"/webhooks/{endpoint['id']}/test", headers=headers)
    (call,) = await receiver.wait("sealed", 1)
    assert call.headers["webhook-id"] == test.json()["message_id"]
    for plaintext in plaintexts:
        assert verify(plaintext, call)["type"] == "webhook.test"
