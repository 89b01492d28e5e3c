"""The micro-batcher with the real model: concurrent callers share model calls and each
gets its own vectors back."""

import asyncio

import numpy as np
import pytest
from mxw_embedder.batcher import BatcherClosed, MicroBatcher
from mxw_embedder.models import DEFAULT_MODEL, load_embedder

TEXTS = [
    "We installed solar panels on the roof.",
    "The recipe needs two cups of flour.",
    "Our football team lost the final on penalties.",
    "Interest rates went up again this quarter.",
    "Whales migrate to warmer waters to breed.",
    "The laptop battery dies after two hours.",
]


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(DEFAULT_MODEL, "cpu")


@pytest.fixture
async def batcher(embedder):
    b = MicroBatcher(embedder, max_batch=16, encode_batch_size=8)
    b.start()
    yield b
    await b.stop()


async def test_requests_waiting_together_share_one_model_call(batcher, embedder):
    # Jobs' slices and queries submitted at once: the worker finds all of them queued.
    jobs = [TEXTS[:2], TEXTS[2:5], TEXTS[5:]]
    results = await asyncio.gather(
        *(batcher.embed(texts) for texts in jobs),
        batcher.embed_query(["solar power at home"]),
    )
    assert batcher.stats.model_calls == 1
    assert batcher.stats.requests == 4
    assert batcher.stats.texts == 7
    for texts, vectors in zip(jobs, results[:3], strict=True):
        assert np.allclose(vectors, embedder.embed(texts), atol=1e-5)
    query_vectors, tokens = results[3]
    assert query_vectors.shape == (1, 384)
    assert tokens == embedder.count_tokens(["solar power at home"])


async def test_a_model_call_never_exceeds_max_batch_but_takes_a_large_request_whole(embedder):
    batcher = MicroBatcher(embedder, max_batch=4, encode_batch_size=4)
    batcher.start()
    try:
        big, small = TEXTS[:5], TEXTS[5:]
        big_vectors, small_vectors = await asyncio.gather(batcher.embed(big), batcher.embed(small))
        # 5 texts > max_batch: taken alone; the next request goes in a second call.
        assert batcher.stats.model_calls == 2
        assert np.allclose(big_vectors, embedder.embed(big), atol=1e-5)
        assert np.allclose(small_vectors, embedder.embed(small), atol=1e-5)
    finally:
        await batcher.stop()


async def test_queries_are_taken_before_pipeline_work(embedder):
    batcher = MicroBatcher(embedder, max_batch=2, encode_batch_size=2)
    batcher.start()
    finished: list[str] = []

    async def run(name: str, coro):
        await coro
        finished.append(name)

    try:
        await asyncio.gather(
            run("job-1", batcher.embed(TEXTS[:2])),
            run("job-2", batcher.embed(TEXTS[2:4])),
            run("query", batcher.embed_query(["a question"])),
        )
    finally:
        await batcher.stop()
    # All three queued before the worker ran; the query, submitted last, went first.
    assert finished[0] == "query"


async def test_empty_input_needs_no_model_call(batcher):
    vectors = await batcher.embed([])
    assert vectors.shape == (0, 384)
    assert batcher.stats.model_calls == 0


async def test_after_stop_submissions_fail_clearly(embedder):
    batcher = MicroBatcher(embedder, max_batch=4, encode_batch_size=4)
    batcher.start()
    await batcher.stop()
    with pytest.raises(BatcherClosed):
        await batcher.embed(["too late"])
