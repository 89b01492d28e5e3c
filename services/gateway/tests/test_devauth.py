import jwt
import pytest
from mxw_gateway.main import create_app
from mxw_gateway.settings import GatewaySettings
from mxw_gateway.web.routes import DevSignInUnavailable


async def test_local_stack_serves_the_dev_issuers_public_keys(start_gateway, dev_issuer):
    async with start_gateway(dev_jwks_path=dev_issuer.jwks_path) as client:
        response = await client.get("/.well-known/jwks.json")  # no token: keys are public
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert [k["kid"] for k in keys] == [dev_issuer.kid]
    assert not {"d", "p", "q"} & set(keys[0])
    # A token minted by the dev issuer verifies against what was served.
    key = jwt.PyJWK(keys[0])
    claims = jwt.decode(
        dev_issuer.mint("alice"), key.key, algorithms=["RS256"], audience="mxwhisper"
    )
    assert claims["sub"] == "alice"


async def test_without_the_dev_issuer_there_is_no_jwks_route(start_gateway):
    async with start_gateway() as client:
        response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 404


async def test_c1_dev_sign_in_is_off_unless_enabled(start_gateway, dev_issuer):
    # The dev issuer's JWKS and its signing key are both there: still no minting route.
    async with start_gateway(dev_jwks_path=dev_issuer.jwks_path) as client:
        config = (await client.get("/app/config.json")).json()
        response = await client.post("/app/dev-sign-in", json={"user": "alice", "admin": True})
        jwks = await client.get("/.well-known/jwks.json")
    assert config["dev_sign_in"] is False
    assert response.status_code in (404, 405)
    assert "access_token" not in response.text
    assert jwks.status_code == 200  # the public keys are still served


async def test_c1_dev_sign_in_mints_only_when_enabled(start_gateway, dev_issuer):
    async with start_gateway(dev_jwks_path=dev_issuer.jwks_path, dev_sign_in=True) as client:
        config = (await client.get("/app/config.json")).json()
        response = await client.post("/app/dev-sign-in", json={"user": "alice"})
    assert config["dev_sign_in"] is True
    assert response.status_code == 200
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice"


def test_c1_dev_sign_in_without_the_signing_key_refuses_to_start(infra, tmp_path, dev_issuer):
    public_only = tmp_path / "jwks.json"  # the JWKS alone, as compose mounts it
    public_only.write_text(dev_issuer.jwks_path.read_text())
    settings = infra.settings(
        GatewaySettings,
        "gateway",
        blob_root=tmp_path / "blobs",
        dev_jwks_path=public_only,
        dev_sign_in=True,
    )
    with pytest.raises(DevSignInUnavailable, match="signing key"):
        create_app(settings)
