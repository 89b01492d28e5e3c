"""POST /v1/embeddings and GET /v1/models through the app, with real tokens and the model."""

import httpx
import numpy as np
import pytest

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def client(embedder_app):
    transport = httpx.ASGITransport(app=embedder_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://embedder") as c:
        yield c


@pytest.fixture(scope="module")
def service_auth(service_token):
    return {"Authorization": f"Bearer {service_token}"}


@pytest.fixture(scope="module")
def user_auth(dev_issuer):
    return {"Authorization": f"Bearer {dev_issuer.mint('alice')}"}


async def test_service_token_gets_openai_shaped_embeddings(client, service_auth):
    response = await client.post(
        "/v1/embeddings",
        json={"input": ["hello world", "solar panels on the roof"], "model": "all-MiniLM-L6-v2"},
        headers=service_auth,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == "all-MiniLM-L6-v2"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # [CLS] hello world [SEP] = 4; the second text has more than 2 word pieces.
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4 + 4


async def test_user_jwt_is_accepted_and_a_single_string_works(client, user_auth):
    response = await client.post(
        "/v1/embeddings",
        json={
            "input": "hello world",
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "encoding_format": "float",
            "dimensions": 384,
            "user": "ignored-openai-field",
        },
        headers=user_auth,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["data"]) == 1
    assert len(body["data"][0]["embedding"]) == 384
    assert body["usage"]["prompt_tokens"] == 4


async def test_the_api_and_the_model_agree(client, service_auth):
    from mxw_embedder.models import load_embedder

    text = "rivers flow into the sea"
    response = await client.post("/v1/embeddings", json={"input": text}, headers=service_auth)
    expected = load_embedder("all-MiniLM-L6-v2", "cpu").embed([text])[0]
    assert np.allclose(response.json()["data"][0]["embedding"], expected, atol=1e-5)


async def test_base64_is_little_endian_float32_of_the_same_vectors(client, service_auth):
    import base64

    texts = ["rivers flow into the sea", "solar panels on the roof"]
    as_floats = await client.post("/v1/embeddings", json={"input": texts}, headers=service_auth)
    as_base64 = await client.post(
        "/v1/embeddings",
        json={"input": texts, "encoding_format": "base64"},
        headers=service_auth,
    )
    assert as_base64.status_code == 200, as_base64.text
    for f, b in zip(as_floats.json()["data"], as_base64.json()["data"], strict=True):
        assert isinstance(b["embedding"], str)
        raw = base64.b64decode(b["embedding"])
        assert len(raw) == 384 * 4
        decoded = np.frombuffer(raw, dtype="<f4")
        assert np.allclose(decoded, f["embedding"], atol=1e-6)
    assert as_base64.json()["usage"] == as_floats.json()["usage"]


async def test_concurrent_requests_all_get_their_own_vectors(client, service_auth):
    """Many callers at once go through the micro-batcher; each gets exactly its texts'
    vectors back, in its order."""
    import asyncio

    from mxw_embedder.models import load_embedder

    texts = [f"note {i}: the {w} crossed the river" for i, w in enumerate("abcdefghijkl")]
    responses = await asyncio.gather(
        *(
            client.post("/v1/embeddings", json={"input": [t, t.upper()]}, headers=service_auth)
            for t in texts
        )
    )
    model = load_embedder("all-MiniLM-L6-v2", "cpu")
    for text, response in zip(texts, responses, strict=True):
        assert response.status_code == 200
        got = np.array([d["embedding"] for d in response.json()["data"]])
        assert np.allclose(got, model.embed([text, text.upper()]), atol=1e-5)


async def test_models_lists_the_served_model(client, user_auth):
    response = await client.get("/v1/models", headers=user_auth)
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["all-MiniLM-L6-v2"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
async def test_without_a_valid_token_the_answer_is_401_problem(client, headers):
    for method, path in (("POST", "/v1/embeddings"), ("GET", "/v1/models")):
        response = await client.request(method, path, json={"input": "hi"}, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["status"] == 401


async def test_a_token_for_another_audience_is_refused(client, dev_issuer):
    token = dev_issuer.mint("alice", audience="someone-else")
    response = await client.post(
        "/v1/embeddings", json={"input": "hi"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert "audience" in response.json()["detail"].lower()


@pytest.mark.parametrize(
    ("payload", "status", "detail"),
    [
        ({"input": []}, 400, "at least one"),
        ({"input": ""}, 400, "input[0] is empty"),
        ({"input": ["ok", "   "]}, 400, "input[1] is empty"),
        ({"input": ["x"] * 9}, 400, "holds 9 strings; at most 8"),
        ({"input": ["ok", "y" * 501]}, 400, "input[1] is 501 characters; the limit is 500"),
        ({"input": "hi", "model": "text-embedding-3-small"}, 400, "'text-embedding-3-small'"),
        ({"input": "hi", "encoding_format": "int8"}, 422, "encoding_format"),
        ({"input": "hi", "dimensions": 256}, 400, "384 dimensions, not 256"),
        ({"input": [1, 2, 3]}, 422, "input"),
        ({}, 422, "input"),
    ],
)
async def test_bad_input_is_a_problem_that_says_why(client, service_auth, payload, status, detail):
    response = await client.post("/v1/embeddings", json=payload, headers=service_auth)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert detail in response.json()["detail"]


async def test_ready_once_the_model_is_loaded(client):
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text


async def test_m5_disabled_user_is_refused_with_a_problem(client, dev_issuer, db):
    await db.execute(
        "INSERT INTO users (id, disabled) VALUES ('m5-embedder-disabled', true) "
        "ON CONFLICT (id) DO UPDATE SET disabled = true"
    )
    auth = {"Authorization": f"Bearer {dev_issuer.mint('m5-embedder-disabled')}"}
    for response in (
        await client.post("/v1/embeddings", json={"input": "hello"}, headers=auth),
        await client.get("/v1/models", headers=auth),
    ):
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["detail"] == "this account is disabled"
