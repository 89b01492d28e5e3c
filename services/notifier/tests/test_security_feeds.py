"""Security review 2026-12 findings of the feeds, against a real notifier (uvicorn), the real
broker and Postgres: no token in traces or logs (M4), disabled users lose their feeds (M5),
forged job.status records reach nobody (L9)."""

import asyncio
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import structlog
from mxw_shared.contracts import Envelope, JobState, JobStatus, Stage
from mxw_shared.logging import configure_logging
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

# Open feeds re-check their user every max(this, 1 s).
ACCESS_CACHE_S = 0.5


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span the process makes from here on, as the exporters get them."""
    from mxw_shared import telemetry

    assert telemetry.setup_tracing("tests")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # the provider keeps the processor: it stops storing


@pytest.fixture(scope="module")
async def notifier(spans, start_notifier):
    async with start_notifier(user_access_cache_s=ACCESS_CACHE_S, auth_leeway_s=0) as server:
        yield server


async def drain(ws, timeout_s: float = 30) -> tuple[list[dict], int | None]:
    messages = []
    try:
        while True:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout_s)))
    except ConnectionClosed:
        pass
    return messages, ws.close_code


async def wait_until(predicate, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)
    return value


def attribute_text(span: ReadableSpan) -> str:
    return json.dumps(dict(span.attributes or {}), default=str)


async def set_disabled(db, user: str, disabled: bool) -> None:
    await db.execute(
        "INSERT INTO users (id, disabled) VALUES ($1, $2) "
        "ON CONFLICT (id) DO UPDATE SET disabled = excluded.disabled",
        user,
        disabled,
    )


# ---- M4: tokens never reach traces or logs ----


async def test_m4_feed_tokens_never_reach_span_attributes_or_logs(
    notifier, spans, make_job, record, dev_issuer
):
    # What the service writes: its log configuration (JSON), every logger into one stream.
    logs = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    configure_logging("INFO", "json", "notifier", stream=logs)
    structlog.configure(cache_logger_on_first_use=False)
    # The service runs uvicorn with log_config=None, so uvicorn's lines reach the root
    # handler; an earlier uvicorn in this process may have given them handlers of its own.
    uvicorn_logs = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error")]
    saved_uvicorn = [(list(log.handlers), log.propagate, log.level) for log in uvicorn_logs]
    for log in uvicorn_logs:
        log.handlers[:], log.propagate, log.level = [], True, logging.NOTSET
    try:
        await feeds_with_token_in_the_query(notifier, spans, make_job, record, dev_issuer, logs)
    finally:
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for log, (handlers, propagate, level) in zip(uvicorn_logs, saved_uvicorn, strict=True):
            log.handlers[:], log.propagate, log.level = handlers, propagate, level


async def feeds_with_token_in_the_query(notifier, spans, make_job, record, dev_issuer, logs):
    user = f"m4-{uuid.uuid4().hex[:8]}"
    job_id = await make_job(user)
    await record(job_id, JobState.done, stage=Stage.embed, progress=1.0)
    token = dev_issuer.mint(user)
    signature = token.split(".")[2]

    async with connect(f"{notifier.ws}/ws/jobs/{job_id}?after=0&access_token={token}") as ws:
        messages, code = await drain(ws)
    assert (len(messages), code) == (1, 1000)
    # Under a sampled span: a parentless client request is not traced (nor its server side).
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("client"):
        async with httpx.AsyncClient(timeout=30) as client:
            stream = await client.get(
                f"{notifier.http}/jobs/{job_id}/events",
                params={"access_token": token},
                headers={"Accept": "text/event-stream"},
            )
            history = await client.get(
                f"{notifier.http}/jobs/{job_id}/events",
                params={"token": "x", "access_token": token},
            )
    assert stream.status_code == 200
    assert "event: end" in stream.text
    assert history.status_code == 200

    def feed_spans() -> list[ReadableSpan]:
        found = [s for s in spans.get_finished_spans() if str(job_id) in attribute_text(s)]
        return found if len(found) >= 5 else []  # 3 server spans, 2 client spans

    found = await wait_until(feed_spans)
    ws_span = next(s for s in found if "/ws/jobs/" in attribute_text(s))
    assert "access_token=[redacted]" in str((ws_span.attributes or {}).get("http.url"))
    for span in spans.get_finished_spans():
        text = attribute_text(span) + span.name
        assert token not in text, span.name
        assert signature not in text, span.name
    written = logs.getvalue()
    assert f"/ws/jobs/{job_id}?after=0&access_token=[redacted]" in written  # uvicorn's line
    assert token not in written
    assert signature not in written


def test_m4_redaction_blanks_query_credentials_and_jwts() -> None:
    from mxw_shared.redaction import scrub_secrets

    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"
    assert scrub_secrets(f"ws://h/ws/jobs?after=3&access_token={jwt}") == (
        "ws://h/ws/jobs?after=3&access_token=[redacted]"
    )
    assert scrub_secrets("/x?api_key=k1&Token=opaque&page=2#frag") == (
        "/x?api_key=[redacted]&Token=[redacted]&page=2#frag"
    )
    assert scrub_secrets(f"/x?q={jwt}") == "/x?q=[redacted]"  # a JWT under any name
    assert scrub_secrets('GET /e?client_secret=s&password=p&x=1 HTTP/1.1"') == (
        'GET /e?client_secret=[redacted]&password=[redacted]&x=1 HTTP/1.1"'
    )
    assert scrub_secrets("/plain/path?after=2") == "/plain/path?after=2"


# ---- M5: a disabled user loses the feeds ----


async def test_m5_disabled_user_is_refused_new_feeds(notifier, make_job, record, dev_issuer, db):
    user = f"m5-{uuid.uuid4().hex[:8]}"
    job_id = await make_job(user)
    await record(job_id, JobState.running, progress=0.1)
    await set_disabled(db, user, True)
    token = dev_issuer.mint(user)

    async with connect(f"{notifier.ws}/ws/jobs/{job_id}?access_token={token}") as ws:
        assert await drain(ws) == ([], 4403)
    assert ws.close_reason == "this account is disabled"
    async with connect(f"{notifier.ws}/ws/jobs?access_token={token}") as ws:
        assert await drain(ws) == ([], 4403)
    async with httpx.AsyncClient(timeout=30) as client:
        for accept in ("text/event-stream", "application/json"):
            response = await client.get(
                f"{notifier.http}/jobs/{job_id}/events",
                headers={"Authorization": f"Bearer {token}", "Accept": accept},
            )
            assert response.status_code == 403, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["detail"] == "this account is disabled"


async def test_m5_open_feeds_of_a_user_who_gets_disabled_are_closed(
    notifier, make_job, record, dev_issuer, db
):
    user = f"m5-{uuid.uuid4().hex[:8]}"
    job_id = await make_job(user)
    await record(job_id, JobState.running, progress=0.1)
    await set_disabled(db, user, False)
    token = dev_issuer.mint(user)

    async with (
        httpx.AsyncClient(timeout=60) as client,
        connect(f"{notifier.ws}/ws/jobs/{job_id}?access_token={token}") as job_ws,
        connect(f"{notifier.ws}/ws/jobs?access_token={token}") as all_ws,
        client.stream(
            "GET",
            f"{notifier.http}/jobs/{job_id}/events",
            params={"access_token": token},
            headers={"Accept": "text/event-stream"},
        ) as sse,
    ):
        assert json.loads(await asyncio.wait_for(job_ws.recv(), 30))["seq"] == 1
        chunks = sse.aiter_text()
        text = ""
        while '"seq": 1' not in text:
            text += await asyncio.wait_for(anext(chunks), 30)
        await set_disabled(db, user, True)
        assert (await drain(job_ws))[1] == 4403
        assert (await drain(all_ws))[1] == 4403
        async for chunk in chunks:  # the stream ends by itself
            text += chunk
    assert "event: error" in text
    assert '"code": 4403' in text
    assert "event: end" not in text


# ---- L9: forged job.status records reach no client ----


async def test_l9_forged_status_record_is_never_sent_and_real_events_follow(
    notifier, make_job, record, emit, publish, dev_issuer
):
    user = f"l9-{uuid.uuid4().hex[:8]}"
    job_id = await make_job(user)
    token = dev_issuer.mint(user)
    async with (
        connect(f"{notifier.ws}/ws/jobs/{job_id}?access_token={token}") as job_ws,
        connect(f"{notifier.ws}/ws/jobs?access_token={token}") as all_ws,
    ):
        first = await emit(job_id, JobState.running, progress=0.1, message="real")
        for ws in (job_ws, all_ws):
            got = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert (got["event_id"], got["seq"]) == (first.id, 1)

        # Terminal, far ahead, with its own event id: no job_events row has it.
        forged = JobStatus(
            job_id=job_id, owner_id=user, stage=Stage.embed, state=JobState.done,
            progress=1.0, seq=1000, message="forged",
        )  # fmt: skip
        await publish(forged, Envelope.for_event(forged, source="attacker"))
        # A real event's id, but a lie about what it says.
        second, second_event = await record(job_id, JobState.running, progress=0.5)
        lie = second_event.model_copy(update={"state": JobState.failed, "message": "forged"})
        await publish(lie, second)
        last = await emit(job_id, JobState.done, stage=Stage.embed, progress=1.0)

        messages, code = await drain(job_ws)
        assert code == 1000
        everything = [json.loads(await asyncio.wait_for(all_ws.recv(), 30)) for _ in range(2)]
    for got in (messages, everything):
        assert [(m["seq"], m["state"], m["message"]) for m in got] == [
            (2, "running", None),
            (3, "done", None),
        ]
        assert got[-1]["event_id"] == last.id
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{notifier.http}/metrics")).text
    assert "mxw_notifier_unconfirmed_events_total" in metrics
