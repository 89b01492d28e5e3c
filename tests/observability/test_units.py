"""Pure unit tests of the observability pieces: exporter and sampler choices from OTEL_*,
log redaction, and that the dashboard and the documented alerts only use metrics the code
defines."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
from mxw_shared import telemetry
from mxw_shared.logging import configure_logging, redact_secrets
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "transcriber", "diarizer", "chunker", "embedder", "notifier")
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXBhcnQ"


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_SAMPLER_ARG",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_exporter_follows_otel_environment(otel_env: pytest.MonkeyPatch) -> None:
    assert telemetry._exporter() is None  # nothing configured: spans made, not exported
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert isinstance(telemetry._exporter(), OTLPSpanExporter)
    otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert telemetry._exporter() is None
    otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    assert isinstance(telemetry._exporter(), ConsoleSpanExporter)


def test_sdk_disabled_turns_tracing_off(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.setup_tracing("test") is False


def _parent(sampled: bool) -> object:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else 0)
    ctx = SpanContext(trace_id=1, span_id=2, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def test_sampler_drops_parentless_noise_and_follows_the_parent(
    otel_env: pytest.MonkeyPatch,
) -> None:
    sampler = telemetry._sampler()
    decide = sampler.should_sample
    # A query or a fetch loop with nothing above it is noise.
    assert decide(None, 7, "SELECT", SpanKind.CLIENT).decision == Decision.DROP
    assert decide(None, 7, "job.status receive", SpanKind.CONSUMER).decision == Decision.DROP
    # Requests and events start traces.
    assert decide(None, 7, "POST /jobs", SpanKind.SERVER).decision != Decision.DROP
    assert decide(None, 7, "audio.uploaded process", SpanKind.CONSUMER).decision != Decision.DROP
    # Under a sampled parent everything is kept; under an unsampled one nothing.
    parent = _parent(True)
    assert decide(parent, 7, "SELECT", SpanKind.CLIENT).decision != Decision.DROP  # type: ignore[arg-type]
    parent = _parent(False)
    assert decide(parent, 7, "POST /jobs", SpanKind.SERVER).decision == Decision.DROP  # type: ignore[arg-type]

    otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    assert telemetry._sampler().should_sample(None, 7, "POST /jobs", SpanKind.SERVER).decision == (
        Decision.DROP
    )


def test_no_traceparent_without_an_active_span() -> None:
    assert telemetry.current_traceparent() is None


def test_publish_context_keeps_headers_when_nothing_is_stored() -> None:
    headers = {"ce_id": "1", "ce_type": "t"}
    with telemetry.publish_context(headers) as sent:
        assert sent == [("ce_id", b"1"), ("ce_type", b"t")]


def test_redaction_of_secret_keys_bearer_credentials_and_jwts() -> None:
    event = {
        "event": f"request failed for Bearer {JWT}",
        "authorization": "Basic dXNlcjpwYXNz",
        "api_token": "plain-secret",
        "detail": f"token {JWT} rejected",
        "job_id": "6499fe62-896f-4228-9ac4-9e45c1baa0b1",
        "count": 3,
    }
    out = redact_secrets(None, "info", dict(event))
    text = json.dumps(out)
    assert JWT not in text
    assert JWT.split(".")[2] not in text
    assert "plain-secret" not in text
    assert "dXNlcjpwYXNz" not in text
    assert out["event"] == "request failed for Bearer [redacted]"
    assert out["job_id"] == event["job_id"]  # ids are not secrets
    assert out["count"] == 3


def test_json_logging_turns_model_progress_bars_off() -> None:
    """Progress bars would be the only non-JSON lines on a worker's stderr."""
    import io
    import logging

    import huggingface_hub.utils
    import structlog
    import transformers.utils.logging as hf_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hf_logging.enable_progress_bar()
    try:
        configure_logging("INFO", "json", stream=io.StringIO())
        assert huggingface_hub.utils.are_progress_bars_disabled()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def _defined_metric_names() -> set[str]:
    from prometheus_client import REGISTRY

    for service in SERVICES:
        importlib.import_module(f"mxw_{service}.main")  # registers the service's metrics

    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        # Series names exist even before a labelled metric has its first sample.
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
        names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_and_documented_alerts_use_defined_metrics() -> None:
    defined = _defined_metric_names()
    dashboard = json.loads((ROOT / "deploy/grafana/mxwhisper-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    docs = (ROOT / "docs/operations.md").read_text()
    used = set(re.findall(r"\bmxw_[a-z_]+", " ".join(exprs) + docs))
    packages = {"mxw_shared", "mxw_local", *(f"mxw_{s}" for s in SERVICES)}
    used = {name for name in used if name not in packages}
    missing = used - defined
    assert not missing, missing
    assert len(exprs) >= 10
