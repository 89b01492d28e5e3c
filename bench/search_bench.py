"""Search at scale: latency and recall@10 of the gateway's search SQL on a synthetic corpus.

Usage:
    .venv/bin/python bench/search_bench.py --chunks 100000 [--queries 200] [--out FILE]

Starts its own embedded PostgreSQL (pgvector) on a free port in a temporary directory (the
dev stack's data is never touched), applies the project's migrations, bulk-loads the
corpus with COPY while the HNSW and GIN indexes are dropped, builds them afterwards
(maintenance_work_mem raised, one parallel worker) and reports build time and size. Then,
for a large user (10 % of all chunks) and a small user (0.05 %), in vector and hybrid
mode: p50/p99 latency of `mxw_gateway.search.repository.search` (the gateway's own SQL
and settings: iterative relaxed-order scan, ef_search 200, 100 candidates for a page of
10, exact fallback) and recall@10 against the same search with index scans off (exact
nearest neighbours). Then the filter strategies side by side (plain HNSW, the iterative
scan alone, the gateway's strategy, counted by rows returned), and the large user's
recall and latency for several (candidates, ef_search) pairs.

The corpus is a documented synthetic stand-in: 384-d unit vectors drawn around 2 000
random cluster centres (centre + Gaussian noise, normalised), and per chunk a text of
words from its cluster's own vocabulary plus common words, so words and meanings agree the
way they do in real transcripts. Queries are fresh draws from the same clusters; their
text is two of the cluster's words. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from mxw_gateway.search import repository
from mxw_gateway.search.repository import Scope, SearchMode, Tuning
from mxw_local.infra import EmbeddedPostgres, free_port
from mxw_shared.db import Pool, create_pool
from mxw_shared.migrate import migrate

DIM = 384
CLUSTERS = 2000
USERS = 1000
CHUNKS_PER_JOB = 100
BIG_USER, SMALL_USER = "user-big", "user-small"
BIG_SHARE, SMALL_SHARE = 0.10, 0.0005
NOISE = 0.06  # per-dimension sigma around a unit centre: cosine to the centre ≈ 0.65
# The gateway's defaults for a page of 10 (candidates = 10 per result, ef_search 200).
GATEWAY_TUNING = Tuning(candidates=100, rrf_k=60, ef_search=200, max_scan_tuples=40_000)
F32 = npt.NDArray[np.float32]


def tuned_postgres(data_dir: Path, port: int, shared_buffers: str) -> EmbeddedPostgres:
    """The project's embedded PostgreSQL with buffers sized for the corpus: the stack's
    128 MB of shared_buffers would time the OS page cache, not the index."""
    return EmbeddedPostgres(
        data_dir,
        port,
        database="search_bench",
        server_settings={
            "shared_buffers": shared_buffers,
            "effective_cache_size": "8GB",
            "work_mem": "64MB",
            "max_parallel_workers_per_gather": "0",
            "jit": "off",
        },
    )


def unit(x: F32) -> F32:
    norms: F32 = np.linalg.norm(x, axis=-1, keepdims=True).astype(np.float32)
    out: F32 = (x / norms).astype(np.float32)
    return out


class Corpus:
    def __init__(
        self,
        n: int,
        seed: int = 7,
        hnsw_m: int | None = None,
        ef_construction: int | None = None,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = n
        # None: the graph parameters of the migrated index.
        self.hnsw_m, self.ef_construction = hnsw_m, ef_construction
        self.centres = unit(self.rng.standard_normal((CLUSTERS, DIM)).astype(np.float32))
        self.cluster_words = [
            [f"k{c}x{w}" for w in range(8)] for c in range(CLUSTERS)
        ]  # e.g. "k17x3": a word only cluster 17 uses
        self.common = [f"common{w}" for w in range(500)]
        self.cluster_of = self.rng.integers(0, CLUSTERS, n)
        owners = self.rng.integers(0, USERS - 2, n).astype(object)
        owners = np.array([f"user-{o}" for o in owners], dtype=object)
        order = self.rng.permutation(n)
        n_big, n_small = int(n * BIG_SHARE), max(20, int(n * SMALL_SHARE))
        owners[order[:n_big]] = BIG_USER
        owners[order[n_big : n_big + n_small]] = SMALL_USER
        self.owner = owners

    def vectors(self, clusters: npt.NDArray[np.int64]) -> F32:
        noise = self.rng.standard_normal((len(clusters), DIM)).astype(np.float32) * NOISE
        return unit(self.centres[clusters] + noise)

    def text(self, cluster: int) -> str:
        own = self.rng.choice(self.cluster_words[cluster], 5)
        common = self.rng.choice(self.common, 15)
        return " ".join([*own, *common])


async def load(pool: Pool, corpus: Corpus) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with pool.acquire() as conn:
        # Rebuilt after the load exactly as the migrations define it (m, ef_construction),
        # unless the command line asks for other graph parameters.
        hnsw_definition: str = await conn.fetchval(
            "SELECT pg_get_indexdef('chunk_embeddings_hnsw'::regclass)"
        )
        if corpus.hnsw_m is not None or corpus.ef_construction is not None:
            # A parameter not asked for keeps its migrated value.
            migrated = dict(re.findall(r"(\w+)='(\d+)'", hnsw_definition))
            m = corpus.hnsw_m or int(migrated.get("m", 16))
            ef_construction = corpus.ef_construction or int(migrated.get("ef_construction", 64))
            hnsw_definition = (
                "CREATE INDEX chunk_embeddings_hnsw ON chunk_embeddings"
                " USING hnsw (embedding vector_cosine_ops)"
                f" WITH (m = {m}, ef_construction = {ef_construction})"
            )
        figures["hnsw_definition"] = hnsw_definition
        await conn.execute("DROP INDEX chunk_embeddings_hnsw")
        await conn.execute("DROP INDEX chunks_tsv")
        # Jobs: each owner's chunks in jobs of CHUNKS_PER_JOB.
        job_of = np.empty(corpus.n, dtype=object)
        jobs: list[tuple[Any, ...]] = []
        idx_in_job = np.zeros(corpus.n, dtype=np.int64)
        by_owner: dict[str, list[int]] = {}
        for i, owner in enumerate(corpus.owner):
            by_owner.setdefault(owner, []).append(i)
        for owner, rows in by_owner.items():
            for start in range(0, len(rows), CHUNKS_PER_JOB):
                job_id = uuid.uuid4()
                jobs.append((job_id, owner, f"{owner}-{start}.ogg", "file:///bench", "0" * 64))
                for k, row in enumerate(rows[start : start + CHUNKS_PER_JOB]):
                    job_of[row] = job_id
                    idx_in_job[row] = k
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "jobs", records=jobs, columns=["id", "owner_id", "filename", "audio_uri", "sha256"]
        )
        await conn.copy_records_to_table(
            "transcripts",
            records=[
                (j[0], "en" if k % 5 else "de", 600.0, "bench", "") for k, j in enumerate(jobs)
            ],
            columns=["job_id", "language", "duration_s", "model", "text"],
        )
        step = 50_000
        for start in range(0, corpus.n, step):
            stop = min(start + step, corpus.n)
            ids = range(start + 1, stop + 1)
            clusters = corpus.cluster_of[start:stop]
            await conn.copy_records_to_table(
                "chunks",
                records=[
                    (
                        cid,
                        job_of[i],
                        corpus.owner[i],
                        int(idx_in_job[i]),
                        corpus.text(int(clusters[i - start])),
                        float(idx_in_job[i] * 30),
                        float(idx_in_job[i] * 30 + 29),
                        "bench",
                    )
                    for cid, i in zip(ids, range(start, stop), strict=True)
                ],
                columns=["id", "job_id", "owner_id", "idx", "text", "start_s", "end_s", "method"],
            )
            vectors = corpus.vectors(clusters)
            await conn.copy_records_to_table(
                "chunk_embeddings",
                records=[
                    (cid, job_of[i], corpus.owner[i], "synthetic", vectors[i - start])
                    for cid, i in zip(ids, range(start, stop), strict=True)
                ],
                columns=["chunk_id", "job_id", "owner_id", "model", "embedding"],
            )
            print(f"  loaded {stop}/{corpus.n}", flush=True)
        await conn.execute("SELECT setval('chunks_id_seq', $1)", corpus.n)
        figures["load_s"] = time.perf_counter() - started

        await conn.execute("SET maintenance_work_mem = '4GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 1")
        started = time.perf_counter()
        await conn.execute(hnsw_definition)
        figures["hnsw_build_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("CREATE INDEX chunks_tsv ON chunks USING gin (tsv)")
        figures["gin_build_s"] = time.perf_counter() - started
        await conn.execute("VACUUM ANALYZE chunks")
        await conn.execute("VACUUM ANALYZE chunk_embeddings")
        await conn.execute("VACUUM ANALYZE jobs")
        for name in ("chunk_embeddings_hnsw", "chunks_tsv", "chunk_embeddings", "chunks"):
            figures[f"{name}_mb"] = (
                await conn.fetchval("SELECT pg_relation_size($1::regclass)", name) / 2**20
            )
    return figures


async def warm(pool: Pool) -> None:
    """Read the index and tables into shared buffers once, as a serving database has them."""
    await pool.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    for name in ("chunk_embeddings_hnsw", "chunk_embeddings", "chunks", "chunks_tsv"):
        await pool.execute("SELECT pg_prewarm($1::regclass)", name)


async def plan(pool: Pool, corpus: Corpus) -> str:
    vector = [float(x) for x in corpus.vectors(np.array([0]))[0]]
    return await repository.explain_search(
        pool,
        mode=SearchMode.hybrid,
        query_text=" ".join(corpus.cluster_words[0][:2]),
        query_vector=vector,
        scope=Scope(owner_id=BIG_USER),
        tuning=GATEWAY_TUNING,
        limit=10,
    )


async def exact_ids(
    pool: Pool, mode: SearchMode, text: str, vector: list[float], owner: str
) -> list[int]:
    """The same search with index scans off: exact nearest neighbours (GIN is a bitmap scan
    and stays on, so the word side is unchanged)."""
    sql, args = repository.build_search_sql(mode, Scope(owner_id=owner), GATEWAY_TUNING)
    args.values[0], args.values[1], args.values[3], args.values[4] = vector, text, 10, 0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_indexscan = off")
        rows = await conn.fetch(sql, *args.values)
    return [r["chunk_id"] for r in rows]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(pool: Pool, corpus: Corpus, queries: int) -> dict[str, Any]:
    clusters = corpus.rng.integers(0, CLUSTERS, queries)
    vectors = corpus.vectors(clusters)
    texts = [" ".join(corpus.cluster_words[int(c)][:2]) for c in clusters]
    results: dict[str, Any] = {}
    for owner in (BIG_USER, SMALL_USER):
        for mode in (SearchMode.vector, SearchMode.hybrid):
            latencies: list[float] = []
            recalls: list[float] = []
            short = 0
            for i in range(queries):
                vector = [float(x) for x in vectors[i]]
                started = time.perf_counter()
                rows = await repository.search(
                    pool,
                    mode=mode,
                    query_text=texts[i],
                    query_vector=vector,
                    scope=Scope(owner_id=owner),
                    tuning=GATEWAY_TUNING,
                    limit=10,
                    offset=0,
                )
                latencies.append((time.perf_counter() - started) * 1000)
                short += len(rows) < 10
                truth = await exact_ids(pool, mode, texts[i], vector, owner)
                found = {r["chunk_id"] for r in rows}
                recalls.append(len(found & set(truth)) / max(1, len(truth)))
            key = f"{mode.value}/{owner}"
            results[key] = {
                "p50_ms": round(statistics.median(latencies), 2),
                "p99_ms": round(pct(latencies, 0.99), 2),
                "recall_at_10": round(statistics.mean(recalls), 4),
                "short_pages": short,
            }
            print(key, results[key], flush=True)
    results["filter_strategies"] = await strategies(pool, vectors[: min(queries, 100)])
    results["tuning_sweep"] = await sweep(pool, vectors, texts)
    return results


SWEEP = [(50, 200), (50, 400), (100, 200), (100, 400), (100, 800), (200, 800)]


async def sweep(pool: Pool, vectors: F32, texts: list[str]) -> dict[str, Any]:
    """Recall and latency of the large user's vector search against (candidates,
    ef_search): the recall/latency trade-off behind the gateway's defaults."""
    out: dict[str, Any] = {}
    queries = [[float(x) for x in v] for v in vectors]
    truths = [
        set(await exact_ids(pool, SearchMode.vector, t, q, BIG_USER))
        for t, q in zip(texts, queries, strict=True)
    ]
    for candidates, ef_search in SWEEP:
        tuning = Tuning(
            candidates=candidates,
            rrf_k=GATEWAY_TUNING.rrf_k,
            ef_search=ef_search,
            max_scan_tuples=GATEWAY_TUNING.max_scan_tuples,
        )
        latencies: list[float] = []
        recalls: list[float] = []
        for text, vector, truth in zip(texts, queries, truths, strict=True):
            started = time.perf_counter()
            rows = await repository.search(
                pool,
                mode=SearchMode.vector,
                query_text=text,
                query_vector=vector,
                scope=Scope(owner_id=BIG_USER),
                tuning=tuning,
                limit=10,
                offset=0,
            )
            latencies.append((time.perf_counter() - started) * 1000)
            recalls.append(len({r["chunk_id"] for r in rows} & truth) / max(1, len(truth)))
        key = f"vector/{BIG_USER}/candidates={candidates}/ef_search={ef_search}"
        out[key] = {
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(pct(latencies, 0.99), 2),
            "recall_at_10": round(statistics.mean(recalls), 4),
        }
        print(key, out[key], flush=True)
    return out


async def strategies(pool: Pool, vectors: F32) -> dict[str, Any]:
    """Rows a filtered top-50 vector scan returns for each owner, per strategy."""
    sql = (
        "SELECT chunk_id FROM chunk_embeddings WHERE owner_id = $2 "
        "ORDER BY embedding <=> $1 LIMIT 50"
    )
    variants = {
        "hnsw_ef40_no_iterative": ["SET LOCAL hnsw.ef_search = 40"],
        "hnsw_ef200_no_iterative": ["SET LOCAL hnsw.ef_search = 200"],
        "iterative_relaxed_ef200_default_max_scan": [
            "SET LOCAL hnsw.ef_search = 200",
            "SET LOCAL hnsw.iterative_scan = relaxed_order",
        ],
        "iterative_strict_ef200": [
            "SET LOCAL hnsw.ef_search = 200",
            "SET LOCAL hnsw.iterative_scan = strict_order",
        ],
    }
    out: dict[str, Any] = {}
    for owner in (BIG_USER, SMALL_USER):
        in_scope = await pool.fetchval(
            "SELECT count(*) FROM chunk_embeddings WHERE owner_id = $1", owner
        )
        for name, settings in variants.items():
            counts: list[int] = []
            latencies: list[float] = []
            async with pool.acquire() as conn:
                for v in vectors:
                    async with conn.transaction():
                        await conn.execute("SET LOCAL enable_seqscan = off")
                        await conn.execute("SET LOCAL enable_bitmapscan = off")
                        # Off too: otherwise the owner b-tree + a sort wins for small users.
                        await conn.execute("SET LOCAL enable_sort = off")
                        for s in settings:
                            await conn.execute(s)
                        started = time.perf_counter()
                        rows = await conn.fetch(sql, v, owner)
                        latencies.append((time.perf_counter() - started) * 1000)
                        counts.append(len(rows))
            out[f"{name}/{owner}"] = {
                "owner_rows": in_scope,
                "mean_rows_of_50": round(statistics.mean(counts), 1),
                "min_rows_of_50": min(counts),
                "p50_ms": round(statistics.median(latencies), 2),
                "p99_ms": round(pct(latencies, 0.99), 2),
            }
            print(name, owner, out[f"{name}/{owner}"], flush=True)
        # The gateway's whole vector search (iterative scan + exact fallback).
        counts = []
        for v in vectors:
            rows = await repository.search(
                pool,
                mode=SearchMode.vector,
                query_text="",
                query_vector=[float(x) for x in v],
                scope=Scope(owner_id=owner),
                tuning=GATEWAY_TUNING,
                limit=50,
                offset=0,
            )
            counts.append(len(rows))
        out[f"gateway/{owner}"] = {
            "mean_rows_of_50": round(statistics.mean(counts), 1),
            "min_rows_of_50": min(counts),
        }
        print("gateway", owner, out[f"gateway/{owner}"], flush=True)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--shared-buffers", default="1GB")
    parser.add_argument("--hnsw-m", type=int, default=None, help="default: as migrated")
    parser.add_argument("--ef-construction", type=int, default=None, help="default: as migrated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mxw-search-bench-") as tmp:
        postgres = tuned_postgres(Path(tmp) / "pg", free_port(), args.shared_buffers)
        dsn = postgres.start()
        try:
            await migrate(dsn)
            pool = await create_pool(dsn, 1, 4)
            corpus = Corpus(args.chunks, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
            print(f"corpus: {args.chunks} chunks, {USERS} users", flush=True)
            figures: dict[str, Any] = {
                "chunks": args.chunks,
                "users": USERS,
            }
            figures["build"] = await load(pool, corpus)
            print("build", figures["build"], flush=True)
            await warm(pool)
            print(await plan(pool, corpus), flush=True)
            figures["search"] = await measure(pool, corpus, args.queries)
            await pool.close()
        finally:
            postgres.stop()
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
