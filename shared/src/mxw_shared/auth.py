"""Bearer-token verification against an OIDC provider's JWKS (or the local dev issuer's).

Checks: signature with an algorithm allow-list, issuer, audience, expiry and not-before with
a small leeway, and a subject. Keys are cached by `kid`; an unknown `kid` refreshes the key
set (at most once per `min_refresh_s`), so provider key rotation needs no restart.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import jwt

from mxw_shared.settings import CommonSettings


class AuthError(Exception):
    """The token is missing, malformed, expired, or not ours. The message is safe to show."""


# JWS algorithm family → the JWK key type (kty) it signs with.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def _fits(alg: str, key: jwt.PyJWK) -> bool:
    """The key's type is the one the header's algorithm signs with (PyJWT raises TypeError
    for e.g. ES256 against an RSA key)."""
    return _KEY_TYPES.get(alg[:2]) == key.key_type


@dataclass(frozen=True)
class Principal:
    sub: str
    is_admin: bool
    name: str | None = None
    email: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class JwksVerifier:
    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        algorithms: list[str],
        admin_claim: str = "groups",
        admin_value: str = "admin",
        leeway_s: int = 30,
        min_refresh_s: float = 30.0,
    ) -> None:
        if not algorithms or any(a.lower() == "none" or a.startswith("HS") for a in algorithms):
            raise ValueError("only asymmetric JWT algorithms may be allowed")
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.admin_claim = admin_claim
        self.admin_value = admin_value
        self.leeway_s = leeway_s
        self.min_refresh_s = min_refresh_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> JwksVerifier:
        return cls(
            settings.auth_jwks_url,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            algorithms=settings.auth_algorithms,
            admin_claim=settings.auth_admin_claim,
            admin_value=settings.auth_admin_value,
            leeway_s=settings.auth_leeway_s,
        )

    async def verify(self, token: str) -> Principal:
        """The token's principal; AuthError for anything wrong with it, whatever the library
        raised (a crafted header must give 401, never 500)."""
        try:
            return await self._verify(token)
        except AuthError:
            raise
        except Exception as exc:
            raise AuthError("invalid token") from exc

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError(f"token algorithm {alg!r} is not allowed")
        key = await self._key_for(header.get("kid"))
        if not _fits(alg, key):
            raise AuthError(f"token algorithm {alg!r} does not fit its signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise AuthError("token has no usable subject")
        return Principal(
            sub=sub,
            is_admin=self._is_admin(claims),
            name=claims.get("name") or claims.get("preferred_username"),
            email=claims.get("email"),
            claims=claims,
        )

    def _is_admin(self, claims: dict[str, Any]) -> bool:
        value = claims.get(self.admin_claim)
        if isinstance(value, list):
            return self.admin_value in value
        return value == self.admin_value

    async def _key_for(self, kid: str | None) -> jwt.PyJWK:
        key = self._lookup(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._lookup(kid)
            if key is None and time.monotonic() - self._fetched_at >= self.min_refresh_s:
                await self._refresh()
                key = self._lookup(kid)
        if key is None:
            raise AuthError("token signed by an unknown key")
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            document = await _fetch_json(self.jwks_url)
            keys = jwt.PyJWKSet.from_dict(document).keys
        except (OSError, ValueError, httpx.HTTPError, jwt.PyJWTError) as exc:
            raise AuthError("signing keys are unavailable") from exc
        self._keys = {k.key_id or str(i): k for i, k in enumerate(keys)}


async def _fetch_json(url: str) -> dict[str, Any]:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.netloc + parsed.path))
        data: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_text))
        return data
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"unsupported JWKS URL scheme {parsed.scheme!r}")
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
        response.raise_for_status()
        data = response.json()
        return data
