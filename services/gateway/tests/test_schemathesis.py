"""Property-based API testing: schemathesis generates requests from the gateway's own OpenAPI
document and sends them, authenticated, to the gateway served in-process (uvicorn in a
thread, real Postgres and broker). No response may be a 5xx other than a documented
dependency failure (502/503/504: the URL's server, the embedder), and every response must
match the documented status codes, content types and schemas."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from mxw_gateway.main import create_app
from mxw_gateway.settings import RATE_LIMITS, GatewaySettings
from mxw_local.infra import free_port
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
DEPENDENCY_FAILURES = frozenset({502, 503, 504})
# The OpenAI-compatible API and URL ingest (this test's first target); the rest of the API
# is tested by the second test.
OWN_PATHS = r"^/(v1/|jobs/from-url$)"


@pytest.fixture(scope="module")
def gateway_base(infra) -> Iterator[str]:
    port = free_port()
    config = infra.settings(
        GatewaySettings,
        "gateway",
        blob_root=infra.root / "schemathesis-blobs",
        max_upload_bytes=100_000,
        public_base_url="http://127.0.0.1",
        # Generated URLs must not make the test wait on the network.
        ingest_timeout_s=2.0,
        ingest_connect_timeout_s=1.0,
        openai_wait_s=0.5,
        rate_limits={name: (6000.0, 1000) for name in RATE_LIMITS},
        embedder_timeout_s=1.0,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the gateway stopped while starting"
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(60)


@pytest.fixture(scope="module")
def auth(dev_issuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {dev_issuer.mint('sam-schemathesis')}"}


# The document the running gateway serves (the routes do not depend on settings); built
# here because schemathesis needs it when the tests are collected.
schema = schemathesis.openapi.from_dict(create_app(GatewaySettings()).openapi())


def call_and_check(case, base_url: str, headers: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    response = case.call(base_url=base_url, headers=headers, timeout=30)
    documented = {str(code) for code in case.operation.definition.raw.get("responses", {})}
    dependency_failure = (
        response.status_code in DEPENDENCY_FAILURES and str(response.status_code) in documented
    )
    checks = CONFORMANCE if dependency_failure else [not_a_server_error, *CONFORMANCE]
    case.validate_response(response, checks=checks, headers=headers)


@schema.include(path_regex=OWN_PATHS).parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_openai_and_ingest_routes_conform(case, gateway_base, auth) -> None:  # type: ignore[no-untyped-def]
    call_and_check(case, gateway_base, auth)


@schema.exclude(path_regex=OWN_PATHS).parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_other_routes_conform(case, gateway_base, auth) -> None:  # type: ignore[no-untyped-def]
    call_and_check(case, gateway_base, auth)
