"""Request ids, security headers, CORS and per-user rate limits."""

from __future__ import annotations

import pytest
from mxw_gateway.hygiene import RateLimiter, request_id_from, security_headers
from mxw_gateway.settings import GatewaySettings
from pydantic import ValidationError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    assert [limiter.acquire("ann") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("ann") == pytest.approx(1.0)  # one token a second
    assert limiter.acquire("bob") == 0.0  # buckets are per user
    clock.now += 1.0
    assert limiter.acquire("ann") == 0.0
    assert limiter.acquire("ann") > 0


def test_bucket_memory_is_bounded():
    limiter = RateLimiter(per_minute=60, burst=1, clock=FakeClock(), max_keys=2)
    for user in ("a", "b", "c"):
        limiter.acquire(user)
    assert limiter.acquire("a") == 0.0  # "a" was evicted: a fresh bucket


def test_request_ids_are_echoed_only_when_safe():
    assert request_id_from("abc-123.X:y_z") == "abc-123.X:y_z"
    for unsafe in ("has space", "x" * 129, "new\nline", "", None):
        generated = request_id_from(unsafe)
        assert generated != unsafe
        assert len(generated) == 32


def test_security_headers_keep_docs_usable():
    api = security_headers("/jobs", https=True)
    assert api["Content-Security-Policy"].startswith("default-src 'none'")
    assert api["X-Content-Type-Options"] == "nosniff"
    assert "max-age" in api["Strict-Transport-Security"]
    assert "Content-Security-Policy" not in security_headers("/docs", https=False)
    assert "Strict-Transport-Security" not in security_headers("/jobs", https=False)


def test_cors_wildcard_with_credentials_is_refused():
    with pytest.raises(ValidationError, match="wildcard"):
        GatewaySettings(cors_origins=["*"], cors_allow_credentials=True)


@pytest.fixture(scope="module")
async def client(start_gateway):
    async with start_gateway(
        cors_origins=["https://app.example"],
        rate_limits={"uploads": (60.0, 2), "search": (6.0, 3)},
    ) as c:
        yield c


async def test_responses_carry_request_id_and_security_headers(client, token):
    mine = await client.get("/jobs", headers={**token("hy"), "X-Request-ID": "trace-42"})
    assert mine.headers["X-Request-ID"] == "trace-42"
    fresh = await client.get("/jobs")  # even errors
    assert fresh.status_code == 401
    assert len(fresh.headers["X-Request-ID"]) == 32
    assert fresh.headers["X-Frame-Options"] == "DENY"
    assert fresh.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_cors_allows_only_configured_origins(client):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    allowed = await client.options("/jobs", headers={"Origin": "https://app.example", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-credentials" not in allowed.headers
    denied = await client.options("/jobs", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in denied.headers


async def test_search_is_rate_limited_per_user_with_retry_after(client, token):
    greedy, other = token("greedy"), token("patient")
    statuses = [
        (await client.get("/search", params={"q": "x"}, headers=greedy)).status_code
        for _ in range(3)
    ]
    assert 429 not in statuses
    limited = await client.get("/search", params={"q": "x"}, headers=greedy)
    assert limited.status_code == 429
    assert limited.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(limited.headers["Retry-After"]) <= 10
    assert (await client.get("/search", params={"q": "x"}, headers=other)).status_code != 429


async def test_uploads_are_rate_limited_before_the_body_is_stored(client, token, infra):
    headers = token("uploader")
    blobs = infra.root / "gateway-blobs"
    for _ in range(2):  # burst of 2; these fail on content but count
        await client.post("/jobs", headers=headers, files={"file": ("a.wav", b"not audio")})
    before = sorted(p for p in blobs.rglob("*") if p.is_file())
    limited = await client.post("/upload", headers=headers, files={"file": ("a.wav", b"x" * 1000)})
    assert limited.status_code == 429
    assert sorted(p for p in blobs.rglob("*") if p.is_file()) == before


async def test_info_cors_preflight_allows_every_method_the_api_uses(client):
    spec = (await client.get("/openapi.json")).json()
    methods = {m.upper() for item in spec["paths"].values() for m in item}
    assert "PATCH" in methods  # PATCH /webhooks/{id}, PATCH /admin/users/{id}
    for method in methods:
        preflight = await client.options(
            "/webhooks/0b6a3c8e-6f0a-4a57-9d4e-2f1c2b3a4d5e",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200, (method, preflight.text)
        assert method in preflight.headers["access-control-allow-methods"], method
