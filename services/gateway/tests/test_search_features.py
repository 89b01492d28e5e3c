"""Search end to end with the real embedder service: its chunks.ready consumer writes the
vectors and its /v1/embeddings (base64) gives the gateway its query vectors. Modes,
filters, highlights, pagination, more-like-this, owner isolation, instant consistency."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import numpy as np
import pytest
import uvicorn
from mxw_local.infra import free_port
from mxw_shared import topics
from mxw_shared.contracts import ChunksReady

EMBEDDER_TOKEN = "embedder-token-for-search-features"

# (text, title) per chunk; each chunk 30 s long.
ASTRONOMY = [
    (
        "Tonight we look at the rings of Saturn through a small telescope; the planet "
        "shows its moons as tiny dots next to the disc.",
        "Saturn through a telescope",
    ),
    ("Scribes cut a goose feather into a quill and dipped it in ink to write.", "Quills"),
    (
        "Budget deficits grew again this year, and the tax reform bill stalled in the "
        "finance committee before the summer recess; thanks to Quillfeather for the figures.",
        "Closing remarks",
    ),
    ("A quill pen and an inkwell stood on the old oak desk.", "The desk"),
    ("Soft down feathers keep the ducklings warm at night.", "Ducklings"),
]
COOKING = [
    ("Knead the dough for ten minutes, then let it rise in a warm place.", "Bread dough"),
    ("Roast the peppers until their skins blister and turn black.", "Roasting peppers"),
]
OTHER_USER = [
    ("Jupiter's great red spot is a storm larger than the Earth.", "Jupiter"),
    ("Quillfeather also spoke at the other conference.", "Other talk"),
]


@pytest.fixture(scope="module")
def embedder_url(infra):
    """The embedder service itself, served by uvicorn on a free port (its own consumer
    group, so it consumes this module's chunks.ready events)."""
    from mxw_embedder.main import create_app
    from mxw_embedder.settings import EmbedderSettings

    settings = infra.settings(
        EmbedderSettings,
        "embedder-search-features",
        service_token=EMBEDDER_TOKEN,
        device="cpu",
        stage_consumers=1,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="embedder-for-search", daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while not server.started:
        assert thread.is_alive(), "embedder did not start"
        assert time.monotonic() < deadline, "embedder did not start in time"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=60)


@pytest.fixture(scope="module")
async def client(start_gateway, embedder_url):
    async with start_gateway(embedder_url=embedder_url, embedder_service_token=EMBEDDER_TOKEN) as c:
        yield c


async def chunk_job(
    db,
    make_job,
    publish,
    read_topic,
    owner: str,
    chunks: list[tuple[str, str]],
    *,
    language: str = "en",
    created_at: dt.datetime | None = None,
) -> tuple[uuid.UUID, list[int]]:
    """A job as the chunker leaves it (transcript + chunks), then chunks.ready; returns
    once the embedder's embeddings.ready for it is out."""
    job_id = await make_job(owner)
    await db.execute(
        "UPDATE jobs SET filename = $2, created_at = coalesce($3, created_at) WHERE id = $1",
        job_id,
        f"{owner}-{len(chunks)}.ogg",
        created_at,
    )
    await db.execute(
        "INSERT INTO transcripts (job_id, language, duration_s, model, text) "
        "VALUES ($1, $2, $3, 'tiny', '')",
        job_id,
        language,
        30.0 * len(chunks),
    )
    ids = []
    for idx, (text, title) in enumerate(chunks):
        ids.append(
            await db.fetchval(
                "INSERT INTO chunks (job_id, owner_id, idx, text, title, topic, keywords, "
                "start_s, end_s, method) VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, 'test') "
                "RETURNING id",
                job_id,
                owner,
                idx,
                text,
                title,
                title.lower().split()[:2],
                idx * 30.0,
                idx * 30.0 + 29.5,
            )
        )
    await publish(ChunksReady(job_id=job_id, owner_id=owner, chunk_count=len(chunks), method="t"))
    assert await read_topic(topics.EMBEDDINGS_READY, job_id, timeout_s=120)
    return job_id, ids


@pytest.fixture(scope="module")
async def corpus(db, make_job, publish, read_topic):
    jan = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)
    mar = dt.datetime(2026, 3, 15, tzinfo=dt.UTC)
    astronomy = await chunk_job(
        db, make_job, publish, read_topic, "ada-sf", ASTRONOMY, created_at=jan
    )
    cooking = await chunk_job(
        db, make_job, publish, read_topic, "ada-sf", COOKING, language="de", created_at=mar
    )
    other = await chunk_job(db, make_job, publish, read_topic, "bob-sf", OTHER_USER)
    return {"astronomy": astronomy, "cooking": cooking, "other": other}


async def test_a_chunk_is_searchable_as_soon_as_embeddings_ready_is_out(
    client, token, db, make_job, publish, read_topic
):
    """embeddings.ready leaves through the outbox, written in the transaction that wrote
    the vectors: once a consumer sees it, the search finds the chunk by meaning."""
    text = "The lighthouse keeper climbed two hundred steps every evening to light the lamp."
    job_id, (chunk_id,) = await chunk_job(
        db, make_job, publish, read_topic, "fresh-sf", [(text, "Lighthouse")]
    )
    # No waiting, no retry: the first search after the event.
    response = await client.get(
        "/search",
        params={"q": "man who looked after a coastal beacon tower", "mode": "vector"},
        headers=token("fresh-sf"),
    )
    assert response.status_code == 200, response.text
    (hit,) = response.json()["results"]
    assert hit["chunk_id"] == chunk_id
    assert hit["job_id"] == str(job_id)
    assert (hit["start_s"], hit["end_s"]) == (0.0, 29.5)


async def test_paraphrase_comes_first_with_title_timestamps_and_link(client, token, corpus):
    job_id, ids = corpus["astronomy"]
    response = await client.post(
        "/search",
        json={"q": "watching a ringed gas giant with an amateur scope", "limit": 3},
        headers=token("ada-sf"),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "hybrid"
    top = body["results"][0]
    assert top["chunk_id"] == ids[0]
    assert top["title"] == "Saturn through a telescope"
    assert (top["start_s"], top["end_s"]) == (0.0, 29.5)
    assert top["language"] == "en"
    assert top["audio_url"] == f"http://gateway.test/jobs/{job_id}/audio#t=0"


async def test_a_rare_name_is_found_by_text_mode_though_meaning_ranks_it_low(client, token, corpus):
    _, ids = corpus["astronomy"]
    name_chunk = ids[2]
    query = "Quillfeather"
    vector = await client.get(
        "/search", params={"q": query, "mode": "vector", "limit": 10}, headers=token("ada-sf")
    )
    by_meaning = [r["chunk_id"] for r in vector.json()["results"]]
    # By meaning the name reads like quills and feathers: two chunks about those come
    # before the one that says the name.
    assert by_meaning.index(name_chunk) >= 2
    assert set(by_meaning[:2]) == {ids[1], ids[3]}

    text = await client.get("/search", params={"q": query, "mode": "text"}, headers=token("ada-sf"))
    assert text.status_code == 200, text.text
    results = text.json()["results"]
    assert [r["chunk_id"] for r in results] == [name_chunk]
    assert results[0]["text_rank"] == 1
    assert results[0]["vector_rank"] is None
    assert "thanks to <mark>Quillfeather</mark> for" in results[0]["highlight"]

    # Hybrid: the word match lifts it to the top of the fused list.
    hybrid = await client.get("/search", params={"q": query}, headers=token("ada-sf"))
    assert hybrid.json()["results"][0]["chunk_id"] == name_chunk


@pytest.mark.parametrize("mode", ["hybrid", "vector", "text"])
async def test_owners_see_only_their_own_chunks_in_every_mode(client, token, corpus, mode):
    ada = set(corpus["astronomy"][1]) | set(corpus["cooking"][1])
    bob = set(corpus["other"][1])
    for q in ("Quillfeather", "planets seen through a telescope", "Jupiter storm"):
        for user, own in (("ada-sf", ada), ("bob-sf", bob)):
            response = await client.get(
                "/search", params={"q": q, "mode": mode, "limit": 100}, headers=token(user)
            )
            assert response.status_code == 200, response.text
            found = {r["chunk_id"] for r in response.json()["results"]}
            assert found <= own, (mode, q, user)
    admin = await client.get(
        "/search",
        params={"q": "Quillfeather", "mode": mode, "all": "true", "limit": 100},
        headers=token("root-sf", admin=True),
    )
    found = {r["chunk_id"] for r in admin.json()["results"]}
    assert corpus["astronomy"][1][2] in found
    assert corpus["other"][1][1] in found
    refused = await client.get(
        "/search", params={"q": "x", "mode": mode, "all": "true"}, headers=token("ada-sf")
    )
    assert refused.status_code == 403


async def test_more_like_this_is_scoped_to_the_caller(client, token, corpus):
    _, astro = corpus["astronomy"]
    _, other = corpus["other"]
    mine = await client.get(f"/search/similar/{astro[0]}", headers=token("ada-sf"))
    assert mine.status_code == 200, mine.text
    found = [r["chunk_id"] for r in mine.json()["results"]]
    assert astro[0] not in found  # the chunk itself is left out
    ada = set(astro) | set(corpus["cooking"][1])
    assert set(found) <= ada
    assert mine.json()["results"][0]["highlight"] is None

    # Another user's chunk: not found (its existence is not revealed).
    theirs = await client.get(f"/search/similar/{other[0]}", headers=token("ada-sf"))
    assert theirs.status_code == 404
    assert theirs.headers["content-type"].startswith("application/problem+json")
    # An admin may start from any chunk and look across users: Jupiter is like Saturn.
    # (Limited to these two users' jobs: other modules leave vectors in the database.)
    admin = await client.get(
        f"/search/similar/{astro[0]}",
        params={
            "all": "true",
            "limit": 2,
            "job_id": [str(corpus["astronomy"][0]), str(corpus["other"][0])],
        },
        headers=token("root-sf", admin=True),
    )
    assert admin.json()["results"][0]["chunk_id"] == other[0]


async def test_filters_by_job_language_and_date(client, token, corpus):
    astro_job, astro = corpus["astronomy"]
    cooking_job, cooking = corpus["cooking"]
    ada = token("ada-sf")

    async def ids(**params) -> set[int]:
        response = await client.get(
            "/search", params={"q": "the", "mode": "vector", "limit": 100, **params}, headers=ada
        )
        assert response.status_code == 200, response.text
        return {r["chunk_id"] for r in response.json()["results"]}

    everything = set(astro) | set(cooking)
    assert await ids() == everything
    assert await ids(job_id=str(cooking_job)) == set(cooking)
    assert await ids(job_id=[str(cooking_job), str(astro_job)]) == everything
    assert await ids(language="de") == set(cooking)
    assert await ids(language="EN") == set(astro)
    assert await ids(created_from="2026-02-01T00:00:00Z") == set(cooking)
    assert await ids(created_to="2026-02-01T00:00:00Z") == set(astro)
    assert await ids(created_from="2026-01-01T00:00:00Z", created_to="2026-01-31T00:00:00Z") == set(
        astro
    )
    # Another user's job id narrows to nothing rather than opening their chunks.
    assert await ids(job_id=str(corpus["other"][0])) == set()
    backwards = await client.get(
        "/search",
        params={"q": "x", "created_from": "2026-03-01T00:00:00Z", "created_to": "2026-01-01"},
        headers=ada,
    )
    assert backwards.status_code == 422

    posted = await client.post(
        "/search",
        json={"q": "bread", "mode": "text", "language": "de", "job_ids": [str(cooking_job)]},
        headers=ada,
    )
    assert [r["chunk_id"] for r in posted.json()["results"]] == [cooking[0]]


async def test_pages_follow_each_other_without_gaps_or_repeats(client, token, corpus):
    ada = token("ada-sf")
    whole = await client.get(
        "/search", params={"q": "the market", "mode": "vector", "limit": 100}, headers=ada
    )
    expected = [r["chunk_id"] for r in whole.json()["results"]]
    assert len(expected) == len(ASTRONOMY) + len(COOKING)
    assert whole.json()["next_offset"] is None

    seen: list[int] = []
    offset: int | None = 0
    while offset is not None:
        page = await client.get(
            "/search",
            params={"q": "the market", "mode": "vector", "limit": 2, "offset": offset},
            headers=ada,
        )
        body = page.json()
        assert body["offset"] == offset
        assert body["limit"] == 2
        seen += [r["chunk_id"] for r in body["results"]]
        offset = body["next_offset"]
    assert seen == expected


async def test_the_query_vector_travels_as_base64(embedder_url):
    """The gateway asks the embedder for base64; it decodes to the float answer."""
    import httpx
    from mxw_gateway.search.service import decode_embedding

    async with httpx.AsyncClient(base_url=embedder_url) as http:
        auth = {"Authorization": f"Bearer {EMBEDDER_TOKEN}"}
        as_b64 = await http.post(
            "/v1/embeddings", json={"input": ["hi"], "encoding_format": "base64"}, headers=auth
        )
        as_floats = await http.post("/v1/embeddings", json={"input": ["hi"]}, headers=auth)
    b64 = decode_embedding(as_b64.json()["data"][0]["embedding"])
    floats = decode_embedding(as_floats.json()["data"][0]["embedding"])
    assert len(b64) == 384
    assert np.allclose(b64, floats, atol=1e-6)


GARDEN = [  # (speaker, start, end, text) per line; two chunks of 30 s
    ("SPEAKER_02", 0.0, 9.5, "Welcome to the garden hour. Today we plant tomatoes."),
    ("SPEAKER_01", 10.0, 25.0, "Tomatoes need full sun and deep watering twice a week."),
    ("SPEAKER_02", 30.0, 39.0, "What about pests on the leaves?"),
    ("SPEAKER_01", 40.0, 55.0, "Spray the leaves with soapy water to keep aphids away."),
]


async def speaker_job(db, make_job, publish, read_topic, owner: str) -> uuid.UUID:
    """A job whose two speakers are named Alice (SPEAKER_02) and Bob (SPEAKER_01)."""
    chunks = [
        (" ".join(t for _, _, _, t in GARDEN[:2]), "Planting tomatoes"),
        (" ".join(t for _, _, _, t in GARDEN[2:]), "Pests"),
    ]
    job_id, _ = await chunk_job(db, make_job, publish, read_topic, owner, chunks)
    await db.executemany(
        "INSERT INTO segments (job_id, idx, start_s, end_s, text) VALUES ($1, $2, $3, $4, $5)",
        [(job_id, i, s, e, t) for i, (_, s, e, t) in enumerate(GARDEN)],
    )
    await db.executemany(
        "INSERT INTO speaker_turns (job_id, idx, start_s, end_s, speaker)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(job_id, i, s, e + 0.4, who) for i, (who, s, e, _) in enumerate(GARDEN)],
    )
    await db.executemany(
        "INSERT INTO job_speakers (job_id, label, name, talk_s) VALUES ($1, $2, $3, 20)",
        [(job_id, "SPEAKER_01", "Bob"), (job_id, "SPEAKER_02", "Alice")],
    )
    await db.execute(
        "UPDATE chunks SET speakers = ARRAY['SPEAKER_02', 'SPEAKER_01'] WHERE job_id = $1",
        job_id,
    )
    return job_id


async def test_search_by_speaker_returns_only_their_lines_with_their_seconds(
    client, token, db, make_job, publish, read_topic, corpus
):
    job_id = await speaker_job(db, make_job, publish, read_topic, "cleo-sf")
    await speaker_job(db, make_job, publish, read_topic, "dan-sf")  # also has a Bob
    cleo = token("cleo-sf")

    async def search(**params):
        response = await client.get("/search", params={"limit": 10, **params}, headers=cleo)
        assert response.status_code == 200, response.text
        return response.json()["results"]

    # What did Bob say about watering? His line, with its seconds, and the link starts there.
    first, *rest = await search(q="how often to water tomatoes", speaker="Bob")
    assert first["job_id"] == str(job_id)
    assert first["speakers"] == ["Alice", "Bob"]
    assert [(ln["name"], ln["start_s"], ln["text"]) for ln in first["lines"]] == [
        ("Bob", 10.0, GARDEN[1][3])
    ]
    assert first["lines"][0]["speaker"] == "SPEAKER_01"
    assert first["audio_url"].endswith(f"/jobs/{job_id}/audio#t=10")
    assert all(ln["name"] == "Bob" for hit in rest for ln in hit["lines"])
    # Names match whatever their case; every hit holds only that speaker's lines.
    alice = await search(q="pests", speaker="alice", mode="text")
    assert [h["lines"] for h in alice] == [
        [
            {
                "start_s": 30.0,
                "end_s": 39.0,
                "text": GARDEN[2][3],
                "speaker": "SPEAKER_02",
                "name": "Alice",
            }
        ]
    ]
    # Nobody of that name, or a name only another user gave: nothing.
    assert await search(q="tomatoes", speaker="Carol") == []
    await db.execute(
        "UPDATE job_speakers SET name = 'Erin' WHERE job_id <> $1 AND label = 'SPEAKER_01'"
        " AND job_id IN (SELECT id FROM jobs WHERE owner_id = 'dan-sf')",
        job_id,
    )
    assert await search(q="tomatoes", speaker="Erin") == []
    # Without a filter, lines of everyone; a job without speakers has none.
    everyone = await search(q="aphids soapy water", mode="text")
    assert [ln["name"] for ln in everyone[0]["lines"]] == ["Alice", "Bob"]
    plain = await client.get(
        "/search", params={"q": "quill", "mode": "text"}, headers=token("ada-sf")
    )
    assert plain.json()["results"]
    assert all(h["speakers"] == [] and h["lines"] == [] for h in plain.json()["results"])
    bad = await client.get("/search", params={"q": "x", "speaker": "a\x01b"}, headers=cleo)
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
