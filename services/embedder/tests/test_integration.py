"""The embedder as a running service against the real broker and database."""

import uuid

import numpy as np
import pytest
from mxw_embedder import repository
from mxw_shared import topics
from mxw_shared.contracts import ChunksReady, Envelope

TALK = [
    "We installed solar panels on the roof and the electricity bill dropped by half.",
    "The recipe needs two cups of flour, three eggs and a pinch of salt before baking.",
    "Our football team lost the final match on penalties after extra time.",
    "The bank raised interest rates again, so mortgages are getting more expensive.",
    "Whales migrate thousands of kilometres every year to reach warmer breeding waters.",
    "The new laptop has a faster processor but its battery life is disappointing.",
]


async def add_chunks(db, job_id: uuid.UUID, texts: list[str], owner: str = "alice") -> None:
    await db.executemany(
        "INSERT INTO chunks (job_id, owner_id, idx, text, topic, keywords, start_s, end_s, "
        "method) VALUES ($1, $2, $3, $4, $5, '{}', $6, $7, 'test')",
        [
            (job_id, owner, i, text, text.split()[1], i * 10.0, i * 10.0 + 9.5)
            for i, text in enumerate(texts)
        ],
    )


def ready(job_id: uuid.UUID, n: int, owner: str = "alice") -> ChunksReady:
    return ChunksReady(job_id=job_id, owner_id=owner, chunk_count=n, method="test")


async def statuses_of(db, read_topic, wait_for, job_id: uuid.UUID):
    """Every job.status of the job, once the outbox has relayed all of them."""
    await wait_for(
        "SELECT count(*) = 0 FROM outbox WHERE key = $1 AND topic = $2 AND sent_at IS NULL",
        str(job_id),
        topics.JOB_STATUS,
    )
    expected = await db.fetchval("SELECT count(*) FROM job_events WHERE job_id = $1", job_id)
    found = await read_topic(topics.JOB_STATUS, job_id, count=expected)
    assert len(found) == expected
    return [body for _, body in found]


async def test_chunks_ready_becomes_vectors_embeddings_ready_and_a_done_job(
    embedder_app, db, make_job, publish, read_topic, wait_for
):
    job_id = await make_job(owner_id="alice")
    await add_chunks(db, job_id, TALK)

    await publish(ready(job_id, len(TALK)))

    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'embed'",
        job_id,
        predicate=lambda s: s == "done",
    )
    rows = await db.fetch(
        "SELECT c.idx, e.owner_id, e.model, e.embedding FROM chunk_embeddings e "
        "JOIN chunks c ON c.id = e.chunk_id WHERE e.job_id = $1 ORDER BY c.idx",
        job_id,
    )
    assert [r["idx"] for r in rows] == list(range(len(TALK)))
    for r in rows:
        assert r["owner_id"] == "alice"
        assert r["model"] == "all-MiniLM-L6-v2"
        vector = r["embedding"].to_numpy()
        assert vector.shape == (384,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    assert len({r["embedding"].to_numpy().tobytes() for r in rows}) == len(TALK)

    ((headers, body),) = await read_topic(topics.EMBEDDINGS_READY, job_id)
    assert body["chunk_count"] == len(TALK)
    assert body["model"] == "all-MiniLM-L6-v2"
    assert body["dimensions"] == 384
    assert body["owner_id"] == "alice"
    assert headers["ce_type"] == "io.mxwhisper.embeddings.ready.v1"
    assert headers["ce_source"] == "embedder"

    statuses = await statuses_of(db, read_topic, wait_for, job_id)
    assert all(s["stage"] == "embed" for s in statuses)
    assert statuses[0]["state"] == "running"
    assert statuses[-1]["state"] == "done"
    assert statuses[-1]["progress"] == pytest.approx(1.0)
    assert [s["state"] for s in statuses].count("done") == 1
    metrics = await db.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'embed'", job_id
    )
    assert metrics["chunks"] == len(TALK)


async def test_after_an_edit_only_the_chunks_without_a_vector_are_embedded(
    embedder_app, db, make_job, publish, read_topic, wait_for
):
    job_id = await make_job(owner_id="alice")
    await add_chunks(db, job_id, TALK)
    await publish(ready(job_id, len(TALK)))
    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'embed'",
        job_id,
        predicate=lambda s: s == "done",
    )
    vectors = (
        "SELECT c.id, c.idx, e.model, e.embedding FROM chunks c"
        " LEFT JOIN chunk_embeddings e ON e.chunk_id = c.id WHERE c.job_id = $1 ORDER BY c.idx"
    )
    before = {r["id"]: r["embedding"].to_numpy().tobytes() for r in await db.fetch(vectors, job_id)}

    # The chunker re-cut chunk 2 into two after an edit (its vector went with its row) and
    # ran the job's next generation.
    async with db.acquire() as conn, conn.transaction():
        (recut,) = [
            i
            for i, idx in await conn.fetch("SELECT id, idx FROM chunks WHERE job_id = $1", job_id)
            if idx == 2
        ]
        await conn.execute("DELETE FROM chunks WHERE id = $1", recut)
        # UNIQUE (job_id, idx) is checked row by row: the later chunks park at negative idx.
        await conn.execute("UPDATE chunks SET idx = -idx - 1 WHERE job_id = $1 AND idx > 2", job_id)
        await conn.execute("UPDATE chunks SET idx = -idx WHERE job_id = $1 AND idx < 0", job_id)
        await conn.executemany(
            "INSERT INTO chunks (job_id, owner_id, idx, text, topic, keywords, start_s, end_s,"
            " method, revision) VALUES ($1, 'alice', $2, $3, 'football', '{}', $4, $5, 'test', 1)",
            [
                (job_id, 2, "Our football team lost the final match.", 20.0, 24.0),
                (job_id, 3, "It went to penalties after extra time.", 24.0, 29.5),
            ],
        )
        await conn.execute("UPDATE jobs SET generation = 1 WHERE id = $1", job_id)
        await conn.execute("DELETE FROM job_stages WHERE job_id = $1 AND stage = 'embed'", job_id)
    await publish(
        ChunksReady(
            job_id=job_id,
            owner_id="alice",
            generation=1,
            chunk_count=len(TALK) + 1,
            method="test",
            changed_only=True,
        )
    )
    await wait_for(
        "SELECT state || ':' || generation FROM job_stages WHERE job_id = $1 AND stage = 'embed'",
        job_id,
        predicate=lambda s: s == "done:1",
    )
    after = await db.fetch(vectors, job_id)
    assert len(after) == len(TALK) + 1
    assert all(r["embedding"] is not None for r in after)
    kept = {r["id"]: r["embedding"].to_numpy().tobytes() for r in after if r["id"] in before}
    assert kept == {i: v for i, v in before.items() if i != recut}  # byte for byte
    new = [r for r in after if r["id"] not in before]
    assert [r["idx"] for r in new] == [2, 3]
    assert all(r["model"] == "all-MiniLM-L6-v2" for r in new)
    metrics = await db.fetchval(
        "SELECT metrics FROM job_stages WHERE job_id = $1 AND stage = 'embed'", job_id
    )
    assert (metrics["embedded"], metrics["kept"], metrics["chunks"]) == (2, len(TALK) - 1, 7)
    announced = await read_topic(topics.EMBEDDINGS_READY, job_id, count=2)
    assert [b["chunk_count"] for _, b in announced] == [len(TALK), len(TALK) + 1]


async def test_cosine_search_for_a_paraphrase_ranks_its_chunk_first(
    embedder_app, db, make_job, publish, wait_for, service_token
):
    import httpx

    job_id = await make_job(owner_id="alice")
    await add_chunks(db, job_id, TALK)
    await publish(ready(job_id, len(TALK)))
    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'embed'",
        job_id,
        predicate=lambda s: s == "done",
    )

    # The query vector comes the way the gateway gets it: from /v1/embeddings.
    transport = httpx.ASGITransport(app=embedder_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://embedder") as client:
        response = await client.post(
            "/v1/embeddings",
            json={"input": "which sea creatures travel far to breed in warm oceans"},
            headers={"Authorization": f"Bearer {service_token}"},
        )
    query = np.array(response.json()["data"][0]["embedding"], dtype=np.float32)

    ranked = await db.fetch(
        "SELECT c.idx, e.embedding <=> $2 AS distance FROM chunk_embeddings e "
        "JOIN chunks c ON c.id = e.chunk_id WHERE e.job_id = $1 "
        "ORDER BY e.embedding <=> $2",
        job_id,
        query,
    )
    assert len(ranked) == len(TALK)
    assert ranked[0]["idx"] == 4  # the whales
    assert ranked[0]["distance"] < ranked[1]["distance"] - 0.1


async def test_redelivered_event_leaves_one_vector_per_chunk(
    embedder_app, db, make_job, publish, read_topic, wait_for
):
    job_id = await make_job()
    await add_chunks(db, job_id, TALK[:3])
    event = ready(job_id, 3)
    envelope = Envelope.for_event(event, source="tests")

    await publish(event, envelope)
    await publish(event, envelope)  # same ce_id: a redelivery
    duplicate = await publish(event)  # a new ce_id for the same work: a producer's retry

    await wait_for(
        "SELECT count(*) = 2 FROM processed_events WHERE consumer = 'embedder' "
        "AND event_id = ANY($1::text[])",
        [envelope.id, duplicate.id],
    )
    counts = await db.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT chunk_id) AS distinct_chunks "
        "FROM chunk_embeddings WHERE job_id = $1",
        job_id,
    )
    assert (counts["n"], counts["distinct_chunks"]) == (3, 3)
    ready_events = await read_topic(topics.EMBEDDINGS_READY, job_id, count=2, timeout_s=3)
    assert len(ready_events) == 1


async def test_replacing_a_jobs_vectors_twice_keeps_one_per_chunk(db, make_job):
    job_id = await make_job()
    await add_chunks(db, job_id, TALK[:2])
    chunk_ids = [r["id"] for r in await db.fetch("SELECT id FROM chunks WHERE job_id = $1", job_id)]
    first = np.eye(2, 384, dtype=np.float32)
    second = np.eye(2, 384, k=5, dtype=np.float32)
    async with db.acquire() as conn:
        for vectors in (first, second):
            async with conn.transaction():
                await repository.replace_embeddings(
                    conn, job_id, "alice", "all-MiniLM-L6-v2", chunk_ids, vectors
                )
    rows = await db.fetch(
        "SELECT chunk_id, embedding FROM chunk_embeddings WHERE job_id = $1 ORDER BY chunk_id",
        job_id,
    )
    assert [r["chunk_id"] for r in rows] == sorted(chunk_ids)
    assert np.allclose(np.vstack([r["embedding"].to_numpy() for r in rows]), second)


async def test_a_job_without_chunks_is_done_with_no_vectors(
    embedder_app, db, make_job, publish, read_topic, wait_for
):
    job_id = await make_job()  # silent audio: the chunker found nothing to chunk

    await publish(ready(job_id, 0))

    await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'embed'",
        job_id,
        predicate=lambda s: s == "done",
    )
    assert await db.fetchval("SELECT count(*) FROM chunk_embeddings WHERE job_id = $1", job_id) == 0
    ((_, body),) = await read_topic(topics.EMBEDDINGS_READY, job_id)
    assert (body["chunk_count"], body["dimensions"]) == (0, 384)
    statuses = await statuses_of(db, read_topic, wait_for, job_id)
    assert statuses[-1]["state"] == "done"
    assert statuses[-1]["progress"] == pytest.approx(1.0)


async def test_event_whose_owner_differs_from_the_job_is_rejected(
    embedder_app, db, make_job, publish, read_topic
):
    job_id = await make_job(owner_id="alice")
    await add_chunks(db, job_id, TALK[:2])
    await publish(ready(job_id, 2, owner="mallory"))

    dead = await read_topic(topics.dlq(topics.CHUNKS_READY), job_id)
    assert dead
    assert "owner" in dead[0][0]["x_error"]
    assert await db.fetchval("SELECT count(*) FROM chunk_embeddings WHERE job_id = $1", job_id) == 0


async def test_several_jobs_at_once_each_get_their_own_chunks_vectors(
    embedder_app, db, make_job, publish, wait_for
):
    """Jobs waiting together are consumed by the process's consumers and share the
    micro-batcher; every chunk still gets the vector of its own text (chunks are embedded
    longest first and put back in order)."""
    import asyncio

    from mxw_embedder.models import load_embedder

    jobs = []
    for k in range(4):
        job_id = await make_job(owner_id="alice")
        texts = [f"{text} Take {k}." for text in TALK[k : k + 3]] + ["Short one."]
        await add_chunks(db, job_id, texts)
        jobs.append((job_id, texts))

    await asyncio.gather(*(publish(ready(job_id, len(texts))) for job_id, texts in jobs))

    model = load_embedder("all-MiniLM-L6-v2", "cpu")
    for job_id, texts in jobs:
        await wait_for(
            "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'embed'",
            job_id,
            predicate=lambda s: s == "done",
        )
        rows = await db.fetch(
            "SELECT e.embedding FROM chunk_embeddings e JOIN chunks c ON c.id = e.chunk_id "
            "WHERE e.job_id = $1 ORDER BY c.idx",
            job_id,
        )
        stored = np.vstack([r["embedding"].to_numpy() for r in rows])
        assert np.allclose(stored, model.embed(texts), atol=1e-5)
    stats = embedder_app.state.batcher().stats
    assert stats.requests >= stats.model_calls > 0
