"""Observability through the real pipeline: the five services run in this process (real
Postgres, real broker, real whisper tiny.en and MiniLM), one job goes through them, and
what an operator would look at is checked: the job's trace (in-memory span exporter), each
service's /metrics (parsed as Prometheus text), the JSON log lines, the timing endpoints.
Once on the embedded broker and once on Apache Kafka: the trace crosses five services in
Kafka headers (traceparent), which each broker must carry unchanged."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "short_en.ogg"
SERVICES = ("gateway", "transcriber", "chunker", "embedder", "notifier")
OWNER, OTHER, ADMIN = "obs-owner", "obs-other", "obs-admin"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Run:
    clients: dict[str, httpx.AsyncClient]
    spans: InMemorySpanExporter
    logs: io.StringIO
    job_id: uuid.UUID
    token: str
    bad_token: str
    before: dict[str, Samples]
    after: dict[str, Samples] = field(default_factory=dict)
    auth: dict[str, dict[str, str]] = field(default_factory=dict)


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition, parsed by prometheus-client's own parser (it raises on
    anything that is not valid exposition text)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


async def scrape(clients: dict[str, httpx.AsyncClient]) -> dict[str, Samples]:
    out = {}
    for name, client in clients.items():
        response = await client.get("/metrics")
        assert response.status_code == 200, (name, response.text[:200])
        assert response.headers["content-type"].startswith("text/plain"), name
        out[name] = parse_metrics(response.text)
    return out


async def until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _forged(token: str) -> str:
    """Same header and claims, a signature that does not verify."""
    head, claims, signature = token.split(".")
    return f"{head}.{claims}.{'A' * len(signature)}"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, infra: Any, broker_kind: str) -> Iterator[Any]:
    """`infra` with a broker of this module's own, of `broker_kind` (the idempotent producer
    on for Apache Kafka): the five services join consumer
    groups named after themselves ("chunker", "notifier-webhooks", ...), which on the
    session's broker other modules' services may still be leaving or rebalancing, and which
    would start there on records other modules left behind."""
    from mxw_local.apache_kafka import ApacheKafka
    from mxw_local.infra import EmbeddedKafka, free_port

    root = tmp_path_factory.mktemp(f"obs-{broker_kind}")
    kafka = (
        ApacheKafka(root / "kafka")
        if broker_kind == "kafka"
        else EmbeddedKafka(free_port(), log_path=root / "tansu.log")
    )
    try:
        kafka.start()
        yield replace(
            infra,
            bootstrap_servers=kafka.bootstrap_servers,
            idempotent_producer=isinstance(kafka, ApacheKafka),
        )
    finally:
        kafka.stop()


@pytest.fixture(scope="module")
async def run(broker, dev_issuer, wait_for) -> AsyncIterator[Run]:
    from mxw_chunker.main import create_app as chunker_app
    from mxw_chunker.settings import ChunkerSettings
    from mxw_embedder.main import create_app as embedder_app
    from mxw_embedder.settings import EmbedderSettings
    from mxw_gateway.main import create_app as gateway_app
    from mxw_gateway.settings import GatewaySettings
    from mxw_notifier.main import create_app as notifier_app
    from mxw_notifier.settings import NotifierSettings
    from mxw_shared import telemetry
    from mxw_shared.logging import configure_logging
    from mxw_transcriber.main import create_app as transcriber_app
    from mxw_transcriber.settings import TranscriberSettings

    # Spans: the process-wide provider (installed by the first service runtime) also feeds
    # an in-memory exporter, which sees every service's spans since they share the process.
    assert telemetry.setup_tracing("tests")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))

    # Logs: every service's structlog and stdlib lines, JSON, into one stream. Not cached,
    # so loggers used here do not keep this stream after the module.
    logs = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    configure_logging("INFO", "json", "", stream=logs)
    structlog.configure(cache_logger_on_first_use=False)

    apps = {
        "gateway": gateway_app(
            broker.settings(
                GatewaySettings,
                "gateway",
                rate_limits={"uploads": (6000.0, 1000), "search": (6000.0, 1000)},
            )
        ),
        "transcriber": transcriber_app(
            broker.settings(
                TranscriberSettings,
                "transcriber",
                default_model="tiny.en",
                model_cache_dir=broker.root / "models",
            )
        ),
        "chunker": chunker_app(broker.settings(ChunkerSettings, "chunker")),
        # One consumer is enough for this module's few jobs; fewer group members to settle.
        "embedder": embedder_app(
            broker.settings(
                EmbedderSettings,
                "embedder",
                device="cpu",
                stage_consumers=1,
            )
        ),
        "notifier": notifier_app(broker.settings(NotifierSettings, "notifier")),
    }
    try:
        async with AsyncExitStack() as stack:
            # All five start at once: model loads and consumer-group joins overlap.
            managers = {
                name: LifespanManager(app, startup_timeout=180, shutdown_timeout=60)
                for name, app in apps.items()
            }
            started = await asyncio.gather(
                *(manager.__aenter__() for manager in managers.values()), return_exceptions=True
            )
            for manager, outcome in zip(managers.values(), started, strict=True):
                if not isinstance(outcome, BaseException):
                    stack.push_async_exit(manager)
            for outcome in started:
                if isinstance(outcome, BaseException):
                    raise outcome
            clients: dict[str, httpx.AsyncClient] = {}
            for name, manager in managers.items():
                clients[name] = await stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=manager.app),
                        base_url=f"http://{name}.test",
                        timeout=60,
                    )
                )
            notifier = clients["notifier"]
            for _ in range(1200):  # ready once its job.status consumer reads the live end
                if (await notifier.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("notifier never became ready")

            token = dev_issuer.mint(OWNER)
            auth = {
                OWNER: {"Authorization": f"Bearer {token}"},
                OTHER: {"Authorization": f"Bearer {dev_issuer.mint(OTHER)}"},
                ADMIN: {"Authorization": f"Bearer {dev_issuer.mint(ADMIN, admin=True)}"},
            }
            before = await scrape(clients)
            gateway = clients["gateway"]
            # A forged token first: refused, and must not be logged either.
            bad_token = _forged(token)
            refused = await gateway.get("/jobs", headers={"Authorization": f"Bearer {bad_token}"})
            assert refused.status_code == 401
            response = await gateway.post(
                "/jobs",
                headers=auth[OWNER],
                params={"force": "true"},
                files={"file": (AUDIO.name, AUDIO.read_bytes(), "audio/ogg")},
                data={"language": "en"},
            )
            assert response.status_code == 202, response.text
            job_id = uuid.UUID(response.json()["id"])
            await wait_for(
                "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'embed'",
                job_id,
                predicate=lambda s: s in ("done", "failed"),
                timeout_s=120,
            )
            result = Run(clients, spans, logs, job_id, token, bad_token, before, auth=auth)
            # The notifier handled the final status event (the end of the trace).
            await until(
                lambda: any(
                    s.name == "job.status process" and _attr(s, "mxw.service") == "notifier"
                    for s in _descendants(spans.get_finished_spans(), "chunks.ready process")
                ),
                30,
                "the notifier's span of the job's last status",
            )
            search = await gateway.get(
                "/search", headers=auth[OWNER], params={"q": "hello", "mode": "text"}
            )
            assert search.status_code == 200, search.text
            result.after = await scrape(clients)
            yield result
    finally:
        spans.shutdown()
        structlog.reset_defaults()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def _attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def _descendants(spans: tuple[ReadableSpan, ...], ancestor_name: str) -> list[ReadableSpan]:
    by_id = {s.context.span_id: s for s in spans}
    out = []
    for span in spans:
        parent = span.parent
        while parent is not None and parent.span_id in by_id:
            if by_id[parent.span_id].name == ancestor_name:
                out.append(span)
                break
            parent = by_id[parent.span_id].parent
    return out


def _job_trace(run: Run) -> tuple[int, list[ReadableSpan]]:
    spans = run.spans.get_finished_spans()
    uploads = [
        s
        for s in spans
        if _attr(s, "mxw.service") == "gateway"
        and s.kind == trace.SpanKind.SERVER
        and _attr(s, "http.route") == "/jobs"
        and (_attr(s, "http.request.method") or _attr(s, "http.method")) == "POST"
    ]
    assert len(uploads) == 1, [s.name for s in uploads]
    trace_id = uploads[0].context.trace_id
    return trace_id, [s for s in spans if s.context.trace_id == trace_id]


async def test_job_is_one_trace_across_all_five_services(run: Run, db) -> None:
    trace_id, spans = _job_trace(run)
    assert {_attr(s, "mxw.service") for s in spans} >= set(SERVICES)

    # Every event of the job (stage inputs, status events) was written under this trace.
    rows = await db.fetch("SELECT topic, headers FROM outbox WHERE key = $1", str(run.job_id))
    assert {r["topic"] for r in rows} >= {
        "audio.uploaded",
        "transcript.ready",
        "chunks.ready",
        "embeddings.ready",
        "job.status",
    }
    for row in rows:
        traceparent = row["headers"].get("traceparent", "")
        assert traceparent.split("-")[1] == format(trace_id, "032x"), row["topic"]
    # …and every handling of those events joined it (none started a trace of its own).
    event_ids = {r["headers"]["ce_id"] for r in rows}
    handled = [
        s
        for s in run.spans.get_finished_spans()
        if s.name.endswith(" process") and _attr(s, "messaging.message.id") in event_ids
    ]
    assert len(handled) >= 4
    assert all(s.context.trace_id == trace_id for s in handled)

    # The chain, walked up from the notifier's span of the last status event.
    by_id = {s.context.span_id: s for s in spans}
    last = next(
        s
        for s in _descendants(tuple(spans), "chunks.ready process")
        if s.name == "job.status process"
    )
    chain = [last]
    while chain[-1].parent is not None:
        chain.append(by_id[chain[-1].parent.span_id])
    hops = [(s.name, _attr(s, "mxw.service")) for s in reversed(chain)]
    expected = [
        ("POST /jobs", "gateway"),
        ("audio.uploaded send", None),
        ("audio.uploaded process", "transcriber"),
        ("transcript.ready send", None),
        ("transcript.ready process", "chunker"),
        ("chunks.ready send", None),
        ("chunks.ready process", "embedder"),
        ("job.status send", None),
        ("job.status process", "notifier"),
    ]
    names = [name for name, _ in hops]
    assert names == [name for name, _ in expected], hops
    for (name, service), (_, got) in zip(expected, hops, strict=True):
        if service is not None:
            assert got == service, (name, got)
    assert chain[-1].parent is None  # the upload request is the root

    # Inference, database and publishing spans sit under the stage that did the work.
    def under(child: str, parent: str) -> bool:
        return any(s.name == child for s in _descendants(tuple(spans), parent))

    assert under("whisper.transcribe", "audio.uploaded process")
    assert under("chunk.segment", "transcript.ready process")
    assert under("embed.chunks", "chunks.ready process")
    databases = [s for s in spans if _attr(s, "db.system") or _attr(s, "db.system.name")]
    assert {_attr(s, "mxw.service") for s in databases} >= {"gateway", "transcriber", "chunker"}
    sends = [
        s for s in spans if _attr(s, "messaging.system") == "kafka" and s.name.endswith("send")
    ]
    assert len(sends) >= 4
    assert all(s.kind == trace.SpanKind.PRODUCER for s in sends)


async def test_metrics_parse_and_move_as_the_job_runs(run: Run) -> None:
    before, after = run.before, run.after
    assert set(after) == set(SERVICES)  # each /metrics parsed as Prometheus text

    def moved(service: str, name: str, **labels: str) -> float:
        return value(after[service], name, **labels) - value(before[service], name, **labels)

    for topic, service in (
        ("audio.uploaded", "transcriber"),
        ("transcript.ready", "chunker"),
        ("chunks.ready", "embedder"),
    ):
        assert moved(service, "mxw_events_total", topic=topic, outcome="done") >= 1, topic
    for stage, service in (
        ("transcribe", "transcriber"),
        ("chunk", "chunker"),
        ("embed", "embedder"),
    ):
        assert moved(service, "mxw_stage_seconds_count", stage=stage) >= 1, stage
        assert moved(service, "mxw_stage_queue_wait_seconds_count", stage=stage) >= 1, stage
    assert moved("transcriber", "mxw_transcription_realtime_factor_count", model="tiny.en") >= 1
    assert moved("transcriber", "mxw_transcribed_audio_seconds_total", model="tiny.en") > 3
    assert moved("embedder", "mxw_embedder_texts_total") >= 1
    assert moved("gateway", "mxw_outbox_relayed_total", topic="audio.uploaded") >= 1
    assert moved("notifier", "mxw_notifier_status_events_total") >= 1
    assert moved("gateway", "mxw_search_duration_seconds_count", mode="text") >= 1
    assert value(after["gateway"], "mxw_jobs", state="done") >= 1
    assert ("mxw_outbox_backlog_rows", ()) in after["gateway"]
    lag_topics = {
        dict(labels)["topic"]
        for (name, labels) in after["transcriber"]
        if name == "mxw_consumer_lag_records"
    }
    assert {"audio.uploaded", "transcript.ready", "chunks.ready"} <= lag_topics

    # Bounded labels: no job id (nor any other id of this run) as a label value.
    for service, samples in after.items():
        for name, labels in samples:
            for _, label_value in labels:
                assert str(run.job_id) not in label_value, (service, name, labels)


async def test_dead_letters_are_counted(run: Run, broker: Any, make_job, publisher) -> None:
    from aiokafka import AIOKafkaProducer
    from mxw_shared.contracts import TranscriptReady

    async def counted() -> float:
        samples = (await scrape({"c": run.clients["chunker"]}))["c"]
        return value(samples, "mxw_dlq_events_total", topic="transcript.ready")

    job_id = await make_job(OWNER)
    before = await counted()
    # Owner mismatch: the chunker rejects the event and dead-letters it.
    event = TranscriptReady(
        job_id=job_id, owner_id="intruder", segment_count=1, duration_s=1, model="tiny.en"
    )
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        await publisher(producer)(event)
    finally:
        await producer.stop()

    deadline = time.monotonic() + 90
    while await counted() < before + 1:
        assert time.monotonic() < deadline, "DLQ counter did not move"
        await asyncio.sleep(0.2)


async def test_log_lines_are_json_with_trace_and_job_ids_and_no_token(run: Run) -> None:
    trace_id, _ = _job_trace(run)
    text = run.logs.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) >= 5
    records = [json.loads(line) for line in lines]  # every line is JSON
    ours = [r for r in records if r.get("job_id") == str(run.job_id)]
    services = {r.get("service") for r in ours if r.get("trace_id") == format(trace_id, "032x")}
    assert {"transcriber", "chunker", "embedder"} <= services, services
    assert all("event_id" in r for r in ours if r.get("event") == "stage done")
    assert all(r.get("trace_id") for r in ours if r.get("event") == "stage done")

    # The bearer token used for every request, and a forged one the gateway refused:
    # neither whole nor their signature part appear anywhere.
    for secret in (run.token, run.bad_token):
        assert secret not in text
        assert secret.split(".")[2] not in text


async def test_job_timing_per_stage(run: Run) -> None:
    gateway = run.clients["gateway"]
    response = await gateway.get(f"/jobs/{run.job_id}/timing", headers=run.auth[OWNER])
    assert response.status_code == 200, response.text
    timing = response.json()
    stages = {s["stage"]: s for s in timing["stages"]}
    assert list(stages) == ["transcribe", "chunk", "embed"]
    created = timing["created_at"]
    previous_end = created
    for name in ("transcribe", "chunk", "embed"):
        s = stages[name]
        assert s["state"] == "done"
        # ISO-8601 UTC strings of one format compare in time order.
        assert previous_end <= s["queued_at"] <= s["started_at"] <= s["finished_at"], s
        assert s["queue_wait_s"] >= 0
        assert s["run_s"] > 0
        previous_end = s["finished_at"]
    assert timing["finished_at"] == stages["embed"]["finished_at"]
    assert timing["total_s"] >= sum(s["run_s"] for s in stages.values())

    other = await gateway.get(f"/jobs/{run.job_id}/timing", headers=run.auth[OTHER])
    assert other.status_code == 404
    assert other.headers["content-type"].startswith("application/problem+json")
    assert (await gateway.get(f"/jobs/{run.job_id}/timing")).status_code == 401
    admin = await gateway.get(f"/jobs/{run.job_id}/timing", headers=run.auth[ADMIN])
    assert admin.status_code == 200


async def test_admin_timing_percentiles(run: Run) -> None:
    gateway = run.clients["gateway"]
    response = await gateway.get(
        "/admin/timing", headers=run.auth[ADMIN], params={"window_s": 3600}
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["jobs_done"] >= 1
    e2e = report["end_to_end_s"]
    assert 0 < e2e["p50"] <= e2e["p90"] <= e2e["p95"] <= e2e["p99"] <= e2e["max"]
    for stage in report["stages"]:
        assert stage["done"] >= 1, stage
        for key in ("queue_wait_s", "run_s"):
            p = stage[key]
            assert 0 <= p["p50"] <= p["p90"] <= p["p95"] <= p["p99"] <= p["max"], (stage, key)
    refused = await gateway.get("/admin/timing", headers=run.auth[OWNER])
    assert refused.status_code == 403
    bad_window = await gateway.get("/admin/timing", headers=run.auth[ADMIN], params={"window_s": 1})
    assert bad_window.status_code == 422
