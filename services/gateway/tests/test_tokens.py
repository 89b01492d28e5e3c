"""Every way a token can be wrong, at the gateway's door: 401 problem+json, never data."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mxw_shared.devissuer import AUDIENCE, ISSUER, DevIssuer


def _hs256(payload: dict, secret: bytes, kid: str) -> str:
    """PyJWT refuses to sign HS256 with a PEM key (the very attack), so sign by hand."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(payload).encode())
    signature = b64(hmac.new(secret, header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + signature).decode()


@pytest.fixture(scope="module")
async def client(start_gateway):
    async with start_gateway() as c:
        yield c


def claims(**overrides):
    now = int(time.time())
    base = {"sub": "tok-user", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    base.update(overrides)
    return base


def bad_tokens(issuer: DevIssuer, stranger: DevIssuer) -> dict[str, str]:
    key = issuer.key_path.read_bytes()
    # The public key as PEM: what an HS256 key-confusion attack signs with.
    public_pem = (
        serialization.load_pem_private_key(key, None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    now = int(time.time())
    return {
        "expired": jwt.encode(claims(exp=now - 120), key, "RS256", headers={"kid": issuer.kid}),
        "not yet valid": jwt.encode(
            claims(nbf=now + 3600), key, "RS256", headers={"kid": issuer.kid}
        ),
        "wrong issuer": jwt.encode(
            claims(iss="https://evil"), key, "RS256", headers={"kid": issuer.kid}
        ),
        "wrong audience": jwt.encode(
            claims(aud="other"), key, "RS256", headers={"kid": issuer.kid}
        ),
        "alg none": jwt.encode(claims(), None, "none"),
        "HS256 with the public key": _hs256(claims(), public_pem, issuer.kid),
        "unknown kid": jwt.encode(
            claims(), stranger.key_path.read_bytes(), "RS256", headers={"kid": "nope"}
        ),
        "our kid, other key": jwt.encode(
            claims(), stranger.key_path.read_bytes(), "RS256", headers={"kid": issuer.kid}
        ),
        "no subject": jwt.encode(
            {k: v for k, v in claims().items() if k != "sub"},
            key,
            "RS256",
            headers={"kid": issuer.kid},
        ),
        "garbage": "a.b.c",
    }


async def test_each_bad_token_is_refused(client, dev_issuer, tmp_path):
    stranger = DevIssuer.ensure(tmp_path / "stranger")
    for name, token in bad_tokens(dev_issuer, stranger).items():
        response = await client.get("/jobs", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, name
        assert response.headers["content-type"].startswith("application/problem+json"), name
        assert response.headers["www-authenticate"].startswith("Bearer"), name
    good = dev_issuer.mint("tok-user")
    assert (
        await client.get("/jobs", headers={"Authorization": f"Bearer {good}"})
    ).status_code == 200


def _es256_with_rsa_kid(issuer: DevIssuer) -> str:
    """Header alg ES256 naming the RSA key's kid (PyJWT raised TypeError on it: a 500)."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims(), ec_key, "ES256", headers={"kid": issuer.kid})


async def test_l1_algorithm_that_does_not_fit_the_key_type_is_401(client, dev_issuer):
    response = await client.get(
        "/jobs", headers={"Authorization": f"Bearer {_es256_with_rsa_kid(dev_issuer)}"}
    )
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "does not fit" in response.json()["detail"]
