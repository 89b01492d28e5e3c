"""Chunking: time to cut a one-hour transcript, and boundary quality of each method.

    .venv/bin/python bench/chunking_bench.py [--docs 30] [--runs 3] [--sweep]

Labelled set: documents built by concatenating runs of sentences from distinct topics
(services/chunker/tests/data/topics.json, 8 topics × 16 sentences), each sentence one
segment timed at 2.5 words/s; the true boundaries are the topic changes. Pk and WindowDiff
(lower is better; k = half the mean true topic length) for local and fixed, side by side
with two baselines: no boundary at all, and a boundary between every pair of segments.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from mxw_chunker.domain import (
    ChunkingLimits,
    KeywordExtractor,
    LocalParams,
    Range,
    Segment,
    Vectors,
    boundaries_of,
    fixed_chunks,
    local_chunks,
    pk,
    window_diff,
)
from mxw_chunker.embeddings import load_segment_embedder
from mxw_chunker.settings import ChunkerSettings

TOPICS_PATH = Path(__file__).parent.parent / "services/chunker/tests/data/topics.json"


def load_topics() -> dict[str, list[str]]:
    topics: dict[str, list[str]] = json.loads(TOPICS_PATH.read_text())
    return topics


def timed_segments(texts: Sequence[str], words_per_s: float = 2.5) -> list[Segment]:
    segments = []
    t = 0.0
    for i, text in enumerate(texts):
        duration = len(text.split()) / words_per_s
        segments.append(Segment(i, round(t, 2), round(t + duration, 2), text))
        t += duration + 0.4
    return segments


def labelled_documents(
    topics: dict[str, list[str]], count: int, seed: int = 7
) -> list[tuple[list[Segment], list[Range]]]:
    """`count` documents of 4–6 topic runs (6–16 consecutive sentences each), no topic
    twice in a row."""
    rng = random.Random(seed)
    names = sorted(topics)
    docs = []
    for _ in range(count):
        texts: list[str] = []
        truth: list[Range] = []
        previous = ""
        for _run in range(rng.randint(4, 6)):
            name = rng.choice([n for n in names if n != previous])
            previous = name
            length = rng.randint(6, 16)
            start = rng.randint(0, len(topics[name]) - length)
            truth.append((len(texts), len(texts) + length - 1))
            texts.extend(topics[name][start : start + length])
        docs.append((timed_segments(texts), truth))
    return docs


class CachedEmbed:
    """The real model, each distinct text embedded once (the labelled set reuses 128)."""

    def __init__(self) -> None:
        self.model = load_segment_embedder()
        self.cache: dict[str, Vectors] = {}

    def __call__(self, texts: Sequence[str]) -> Vectors:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for text, vector in zip(missing, self.model(missing), strict=True):
                self.cache[text] = vector
        return np.stack([self.cache[t] for t in texts])


def score(
    docs: list[tuple[list[Segment], list[Range]]], ranges_of: list[list[Range]]
) -> tuple[float, float]:
    pks, wds = [], []
    for (_segments, truth), ranges in zip(docs, ranges_of, strict=True):
        ref, hyp = boundaries_of(truth), boundaries_of(ranges)
        pks.append(pk(ref, hyp))
        wds.append(window_diff(ref, hyp))
    return statistics.mean(pks), statistics.mean(wds)


def one_hour(topics: dict[str, list[str]], segments: int = 900) -> list[Segment]:
    """900 segments of 4 s and 10 words (150 words a minute, about how whisper cuts
    speech): the labelled sentences' words run through in order, cycled."""
    words = " ".join(s for name in sorted(topics) for s in topics[name]).split()
    texts = [" ".join(words[(i * 10 + j) % len(words)] for j in range(10)) for i in range(segments)]
    return [Segment(i, i * 4.0, i * 4.0 + 3.8, t) for i, t in enumerate(texts)]


def ranges(chunks: Sequence[object]) -> list[Range]:
    """Positions (segment idx are positions here: every labelled segment has text)."""
    return [(c.segment_first, c.segment_last) for c in chunks]  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="try local parameter variants")
    args = parser.parse_args()

    settings = ChunkerSettings()
    limits = ChunkingLimits(settings.min_s, settings.max_s, settings.max_chars)
    params = LocalParams(
        block=settings.local_block,
        cutoff_std=settings.local_cutoff_std,
        min_depth=settings.local_min_depth,
        full_depth=settings.local_full_depth,
    )
    keywords = KeywordExtractor(settings.keyword_language, settings.keywords_per_chunk)
    topics = load_topics()

    started = time.perf_counter()
    model = load_segment_embedder(
        settings.embedding_model, settings.embedding_device, settings.embedding_max_tokens
    )
    print(f"model load: {time.perf_counter() - started:.1f} s")

    hour = one_hour(topics)
    print(f"one hour: {len(hour)} segments, {hour[-1].end_s / 60:.0f} min")

    def run_local() -> int:
        return len(local_chunks(hour, model, limits, params, keywords).chunks)

    def run_local_static() -> int:
        return len(local_chunks(hour, model.static, limits, params, keywords).chunks)

    def run_fixed() -> int:
        return len(
            fixed_chunks(
                hour,
                settings.fixed_window_s,
                settings.fixed_overlap_s,
                settings.max_chars,
                keywords,
            )
        )

    print(f"load average before timing: {os.getloadavg()[0]:.1f} (2 cores)")
    methods = (
        ("local, static (auto above 200 segments)", run_local_static),
        ("local, contextual", run_local),
        ("fixed", run_fixed),
    )
    for name, run in methods:
        cpu_times = []
        times = []
        count = 0
        for _ in range(args.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            count = run()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        print(
            f"{name}: {count} chunks, wall median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}, {args.runs} runs), "
            f"CPU median {statistics.median(cpu_times):.2f} s"
        )
    t0, c0 = time.perf_counter(), time.process_time()
    model([s.text for s in hour])
    print(
        f"  of which embedding 900 segments: wall {time.perf_counter() - t0:.2f} s, "
        f"CPU {time.process_time() - c0:.2f} s"
    )
    t0 = time.perf_counter()
    for i in range(0, len(hour), 20):
        keywords.keywords(" ".join(s.text for s in hour[i : i + 20]))
    print(f"  of which YAKE on 45 chunks: {time.perf_counter() - t0:.2f} s")

    docs = labelled_documents(topics, args.docs)
    embed = CachedEmbed()
    n_segments = sum(len(s) for s, _ in docs)
    n_topics = sum(len(t) for _, t in docs)
    print(f"\nlabelled set: {len(docs)} documents, {n_segments} segments, {n_topics} topic runs")
    rows: list[tuple[str, tuple[float, float]]] = []
    rows.append(
        (
            "local, contextual",
            score(
                docs,
                [ranges(local_chunks(s, embed, limits, params, keywords).chunks) for s, _ in docs],
            ),
        )
    )
    static = [
        ranges(local_chunks(s, embed.model.static, limits, params, keywords).chunks)
        for s, _ in docs
    ]
    rows.append(("local, static", score(docs, static)))
    rows.append(
        (
            "fixed",
            score(
                docs,
                [
                    ranges(
                        fixed_chunks(s, settings.fixed_window_s, 0, settings.max_chars, keywords)
                    )
                    for s, _ in docs
                ],
            ),
        )
    )
    rows.append(("baseline: no boundary", score(docs, [[(0, len(s) - 1)] for s, _ in docs])))
    rows.append(
        ("baseline: every gap", score(docs, [[(i, i) for i in range(len(s))] for s, _ in docs]))
    )
    unbounded = ChunkingLimits(settings.min_s, 10_000, 1_000_000)
    rows.append(
        (
            "local, no max_s/max_chars",
            score(
                docs,
                [
                    ranges(local_chunks(s, embed, unbounded, params, keywords).chunks)
                    for s, _ in docs
                ],
            ),
        )
    )
    print(f"{'method':30} {'Pk':>6} {'WindowDiff':>10}")
    for name, (p, w) in rows:
        print(f"{name:30} {p:6.3f} {w:10.3f}")

    if args.sweep:
        print("\nsweep (local, default limits): block cutoff_std min_depth -> Pk WD")
        for block in (3, 4, 6, 8):
            for cutoff_std in (0.5, 1.0, 1.5):
                for min_depth in (0.1, 0.3):
                    variant = LocalParams(block, cutoff_std, min_depth, params.full_depth)
                    p, w = score(
                        docs,
                        [
                            ranges(local_chunks(s, embed, limits, variant, keywords).chunks)
                            for s, _ in docs
                        ],
                    )
                    print(f"  {block} {cutoff_std} {min_depth} -> {p:.3f} {w:.3f}")


if __name__ == "__main__":
    main()
