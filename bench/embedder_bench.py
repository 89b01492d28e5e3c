"""Embedder: query latency (single, 32 concurrent) and chunk throughput vs the raw model.

Usage:
    .venv/bin/python bench/embedder_bench.py [--chunks 512] [--queries 50]

In one process, on the same texts (sentences of transcript-like length, 40-90 words):
- raw: `SentenceTransformer.encode(texts, batch_size=64, normalize_embeddings=True)` in
  one call (PyTorch, the model's own API);
- service path: the embedder's own code on `--runtime` (auto = what the service runs:
  ONNX Runtime on CPU) — the micro-batcher fed by the stage handler's slicing (longest
  first, slices of `batch_size`), as a job's chunks go through it;
- model alone, one query: PyTorch `encode([q])` and the service's runtime `embed([q])`;
- queries: POST /v1/embeddings through the app (ASGI, service token), one at a time and
  32 at once (the micro-batcher shares model calls between them).
Never part of the test suite; the model is the packaged all-MiniLM-L6-v2 on CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable

import httpx
import numpy as np
from mxw_embedder.api import embeddings_router
from mxw_embedder.batcher import MicroBatcher
from mxw_embedder.domain import batches, longest_first
from mxw_embedder.models import DEFAULT_MODEL, load_embedder
from mxw_embedder.settings import EmbedderSettings

WORDS = [
    "the",
    "we",
    "our",
    "meeting",
    "budget",
    "solar",
    "panel",
    "river",
    "team",
    "market",
    "plan",
    "review",
    "quarter",
    "sales",
    "customer",
    "product",
    "release",
    "engineer",
    "design",
    "question",
    "answer",
    "data",
    "model",
    "training",
    "weather",
    "city",
    "road",
    "school",
    "student",
    "teacher",
    "music",
    "film",
    "history",
    "science",
    "water",
    "energy",
]
TOKEN = "bench-token-0123456789"  # noqa: S105  (a throwaway token of this process)


def texts(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90))) + "." for _ in range(n)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto")
    args = parser.parse_args()
    settings = EmbedderSettings(service_token=TOKEN, device="cpu", embedding_runtime=args.runtime)
    embedder = load_embedder(
        DEFAULT_MODEL, "cpu", args.runtime, settings.onnx_cache_dir, settings.onnx_threads
    )
    model = embedder._model  # the raw SentenceTransformer, for the baseline
    corpus = texts(args.chunks)
    batcher = MicroBatcher(
        embedder, max_batch=settings.max_batch_texts, encode_batch_size=settings.batch_size
    )
    batcher.start()

    async def service_path() -> np.ndarray:
        order = longest_first(corpus)
        parts = [
            await batcher.embed(part)
            for part in batches([corpus[i] for i in order], settings.batch_size)
        ]
        out = np.zeros((len(corpus), embedder.dimensions), dtype=np.float32)
        out[order] = np.vstack(parts)
        return out

    model.encode(corpus[:64], batch_size=64)  # warm-up
    raw_s: list[float] = []
    service_s: list[float] = []
    # Interleaved rounds, so both see the same machine load.
    for _ in range(args.rounds):
        started = time.perf_counter()
        raw = model.encode(
            corpus, batch_size=settings.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        raw_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        ours = await service_path()
        service_s.append(time.perf_counter() - started)
    assert np.allclose(raw, ours, atol=1e-4)
    raw_rate = args.chunks / min(raw_s)
    service_rate = args.chunks / min(service_s)

    def alone(embed: Callable[[list[str]], object]) -> list[float]:
        timings = []
        for i in range(args.queries + 5):
            started = time.perf_counter()
            embed([f"what did we say about the {WORDS[i % len(WORDS)]} last week"])
            timings.append((time.perf_counter() - started) * 1000)
        return timings[5:]  # the first few warm caches up

    model_alone = {
        "torch_encode": alone(lambda q: model.encode(q, normalize_embeddings=True)),
        f"service_runtime_{embedder.runtime}": alone(embedder.embed),
    }

    from fastapi import FastAPI

    app = FastAPI()
    # The service token: no user, so no users table to consult.
    app.include_router(embeddings_router(settings, lambda: batcher, lambda: None))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    questions = [f"what did we say about the {w} last week" for w in WORDS]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://embedder"
    ) as client:

        async def one(q: str) -> float:
            started = time.perf_counter()
            response = await client.post(
                "/v1/embeddings", json={"input": q, "encoding_format": "base64"}, headers=auth
            )
            assert response.status_code == 200, response.text
            return (time.perf_counter() - started) * 1000

        for q in questions[:5]:
            await one(q)  # warm-up
        single = [await one(questions[i % len(questions)]) for i in range(args.queries)]
        concurrent: list[float] = []
        wall: list[float] = []
        for r in range(5):
            started = time.perf_counter()
            concurrent += await asyncio.gather(
                *(one(questions[(r + i) % len(questions)]) for i in range(32))
            )
            wall.append((time.perf_counter() - started) * 1000)
    await batcher.stop()
    figures = {
        "runtime": embedder.runtime,
        "throughput": {
            "chunks": args.chunks,
            "raw_encode_chunks_per_s": round(raw_rate, 1),
            "service_path_chunks_per_s": round(service_rate, 1),
            "ratio": round(service_rate / raw_rate, 3),
        },
        "model_alone_single_query_ms": {
            name: {"p50": round(statistics.median(t), 2), "p99": round(pct(t, 0.99), 2)}
            for name, t in model_alone.items()
        },
        "query_single_ms": {
            "p50": round(statistics.median(single), 2),
            "p99": round(pct(single, 0.99), 2),
        },
        "query_32_concurrent_ms": {
            "p50": round(statistics.median(concurrent), 2),
            "p99": round(pct(concurrent, 0.99), 2),
            "wall_for_32_p50": round(statistics.median(wall), 2),
        },
        "model_calls": batcher.stats.model_calls,
        "requests": batcher.stats.requests,
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
