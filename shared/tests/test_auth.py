import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from mxw_shared.auth import AuthError, JwksVerifier
from mxw_shared.devissuer import AUDIENCE, ISSUER, DevIssuer


@pytest.fixture
def issuer(tmp_path):
    return DevIssuer.ensure(tmp_path / "auth")


def verifier_for(issuer: DevIssuer, **overrides) -> JwksVerifier:
    options = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "algorithms": ["RS256"],
        "min_refresh_s": 0.0,
        "leeway_s": 5,
    }
    options.update(overrides)
    return JwksVerifier(issuer.jwks_url, **options)


async def test_valid_token_gives_principal_with_admin_from_the_claim(issuer):
    verifier = verifier_for(issuer)
    user = await verifier.verify(issuer.mint("alice", name="Alice", email="a@example.org"))
    admin = await verifier.verify(issuer.mint("root", admin=True))
    assert (user.sub, user.is_admin, user.name, user.email) == (
        "alice",
        False,
        "Alice",
        "a@example.org",
    )
    assert admin.is_admin


@pytest.mark.parametrize(
    ("mint_kwargs", "message"),
    [
        ({"ttl_s": -60}, "expired"),
        ({"audience": "someone-else"}, "(?i)audience"),
        ({"issuer": "https://evil.example"}, "(?i)issuer"),
    ],
)
async def test_tokens_not_meant_for_us_are_refused(issuer, mint_kwargs, message):
    with pytest.raises(AuthError, match=message):
        await verifier_for(issuer).verify(issuer.mint("alice", **mint_kwargs))


async def test_token_signed_by_another_key_is_refused(issuer, tmp_path):
    other = DevIssuer.ensure(tmp_path / "other")
    forged = jwt.encode(
        {
            "sub": "alice",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        other.key_path.read_bytes(),
        algorithm="RS256",
        headers={"kid": issuer.kid},  # claims to be ours
    )
    with pytest.raises(AuthError, match="invalid token"):
        await verifier_for(issuer).verify(forged)


async def test_symmetric_and_none_algorithms_are_refused(issuer):
    public_jwk = json.loads(issuer.jwks_path.read_text())["keys"][0]
    hs = jwt.encode(
        {"sub": "alice"}, public_jwk["n"], algorithm="HS256", headers={"kid": issuer.kid}
    )
    with pytest.raises(AuthError, match="not allowed"):
        await verifier_for(issuer).verify(hs)
    unsigned = jwt.encode({"sub": "alice"}, None, algorithm="none")
    with pytest.raises(AuthError):
        await verifier_for(issuer).verify(unsigned)
    with pytest.raises(ValueError, match="asymmetric"):
        verifier_for(issuer, algorithms=["HS256"])


async def test_garbage_is_a_clear_error(issuer):
    with pytest.raises(AuthError, match="malformed"):
        await verifier_for(issuer).verify("not-a-jwt")


async def test_rotated_key_is_picked_up_without_restart(issuer, tmp_path):
    verifier = verifier_for(issuer)
    await verifier.verify(issuer.mint("alice"))  # caches the first key
    # The provider rotates: a new key appears in the JWKS at the same URL.
    issuer.key_path.unlink()
    rotated = DevIssuer.ensure(issuer.key_path.parent)
    assert rotated.kid != issuer.kid
    principal = await verifier.verify(rotated.mint("alice"))
    assert principal.sub == "alice"


async def test_unknown_kid_refresh_is_rate_limited(issuer, tmp_path):
    verifier = verifier_for(issuer, min_refresh_s=3600)
    await verifier.verify(issuer.mint("alice"))
    stranger = DevIssuer.ensure(tmp_path / "stranger")
    for _ in range(3):
        with pytest.raises(AuthError, match="unknown key"):
            await verifier.verify(stranger.mint("alice"))
    # The JWKS file was not re-read: replacing it with junk changes nothing.
    issuer.jwks_path.write_text("junk")
    assert (await verifier.verify(issuer.mint("bob"))).sub == "bob"


async def test_l1_header_alg_that_does_not_fit_the_key_type_is_an_auth_error(issuer):
    now = int(time.time())
    forged = jwt.encode(
        {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": issuer.kid},  # the RSA key's kid
    )
    verifier = verifier_for(issuer, algorithms=["RS256", "ES256"])
    with pytest.raises(AuthError, match="does not fit"):
        await verifier.verify(forged)


async def test_l1_any_library_error_while_verifying_is_an_auth_error(issuer):
    # A kid that is not a string made the key lookup raise TypeError (unhashable).
    token = jwt.encode({"sub": "alice"}, issuer.key_path.read_bytes(), "RS256", headers={})
    _, body, signature = token.split(".")
    odd = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":["x"]}').rstrip(b"=").decode()
    with pytest.raises(AuthError):
        await verifier_for(issuer).verify(f"{odd}.{body}.{signature}")
