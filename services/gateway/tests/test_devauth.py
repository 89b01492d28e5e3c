import jwt


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
