"""The local dev issuer: an RSA signing key and its JWKS on disk, and tokens minted with it.

Only for the local stack and tests; in a cluster, tokens come from a real OIDC provider and
this module is not used.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "mxwhisper-dev"
AUDIENCE = "mxwhisper"


@dataclass(frozen=True)
class DevIssuer:
    key_path: Path
    jwks_path: Path
    kid: str

    @classmethod
    def ensure(cls, directory: Path) -> DevIssuer:
        """Create the key pair once (0600 private key); reuse it on later starts."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / "dev-signing-key.pem"
        jwks_path = directory / "jwks.json"
        if not key_path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
        private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(private, rsa.RSAPrivateKey)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
        kid = jwt.PyJWK(jwk).key_id or _thumbprint(jwk)
        jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
        jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2))
        return cls(key_path=key_path, jwks_path=jwks_path, kid=kid)

    @property
    def jwks_url(self) -> str:
        return self.jwks_path.resolve().as_uri()

    def mint(
        self,
        sub: str,
        *,
        admin: bool = False,
        name: str | None = None,
        email: str | None = None,
        ttl_s: int = 12 * 3600,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": issuer,
            "aud": audience,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
            "groups": ["admin"] if admin else [],
        }
        if name:
            claims["name"] = name
        if email:
            claims["email"] = email
        return jwt.encode(
            claims, self.key_path.read_bytes(), algorithm="RS256", headers={"kid": self.kid}
        )


def _thumbprint(jwk: dict[str, str]) -> str:
    import base64
    import hashlib

    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
