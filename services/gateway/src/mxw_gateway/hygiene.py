"""HTTP hygiene of the public API: request ids, security headers, CORS, per-user rate limits.

Rate limits are token buckets kept in each gateway replica's memory: with N replicas behind a
load balancer a user gets up to N times the rate. That bounds abuse without a shared store;
a cluster that needs exact global limits puts them in its ingress.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from fastapi import Depends, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from mxw_shared.problems import Problem
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from mxw_gateway.deps import CurrentUserDep, SettingsDep
from mxw_gateway.settings import GatewaySettings

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")


def request_id_from(header: str | None) -> str:
    """The caller's id when it is safe to echo and log, else a new one."""
    if header and _VALID_REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


def security_headers(path: str, https: bool) -> dict[str, str]:
    headers = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    # The API returns data, never pages: nothing may run. The interactive docs load
    # Swagger UI's script and styles, so they keep the browser defaults.
    if not path.startswith(_DOCS_PATHS):
        headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors 'none'"
    if https:
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    return headers


class HygieneMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: object, https: bool) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.https = https

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request.state.request_id = request_id
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            response = await call_next(request)
        response.headers[REQUEST_ID_HEADER] = request_id
        for name, value in security_headers(request.url.path, self.https).items():
            response.headers.setdefault(name, value)
        return response


def install_hygiene(app: FastAPI, settings: GatewaySettings) -> None:
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=settings.cors_allow_credentials,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Location", "Retry-After"],
        )
    app.add_middleware(HygieneMiddleware, https=settings.public_base_url.startswith("https"))


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets per key: `per_minute` requests a minute, bursts up to `burst`."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """0 when allowed (a token is taken), else the seconds until one is available."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.pop(key, None) or _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets[key] = bucket  # most recently used last
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate if self.rate > 0 else math.inf


def rate_limit(name: str) -> Callable[..., Awaitable[None]]:
    """A route dependency: the caller's `name` budget (settings.RATE_LIMITS), 429 when spent."""

    async def check(request: Request, user: CurrentUserDep, settings: SettingsDep) -> None:
        limiters: dict[str, RateLimiter] = request.app.state.rate_limiters
        limiter = limiters.get(name)
        if limiter is None:
            per_minute, burst = settings.rate_limits[name]
            limiter = limiters.setdefault(name, RateLimiter(per_minute, burst))
        wait = limiter.acquire(user.sub)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise Problem(
                429,
                "Too many requests",
                f"{name} limit reached; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )

    return check


RateLimitUploads = Depends(rate_limit("uploads"))
RateLimitSearch = Depends(rate_limit("search"))
RateLimitReprocess = Depends(rate_limit("reprocess"))
RateLimitWebhookTests = Depends(rate_limit("webhook_tests"))
