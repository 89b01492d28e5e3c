"""Chunk titles against a person's: YAKE's best phrase (the old titles) and the embedding-
ranked phrases of mxw_chunker.titles, contextual and static, on the labelled set.

    .venv/bin/python bench/titles_bench.py [--examples 8] [--hours 2]

Labelled set: services/chunker/tests/fixtures/titles/labelled.json (34 spoken-style chunks,
each with a title written by hand). Agreement, higher is better: the mean cosine similarity
of the produced title to the human one under all-MiniLM-L6-v2 (the headline; the same model
ranks the candidates, so the word-overlap F1 beside it is the model-free check) and the mean
F1 of their content words. Then the added cost: titling every chunk of a long transcript
(`--hours`, default 2) against YAKE, both embedding modes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from mxw_chunker.domain import Chunk, KeywordExtractor, Vectors
from mxw_chunker.embeddings import load_segment_embedder
from mxw_chunker.titles import EmbedFn, title_similarity, word_f1

LABELLED = Path(__file__).parent.parent / "services/chunker/tests/fixtures/titles/labelled.json"


def load_labelled() -> list[dict[str, str]]:
    chunks: list[dict[str, str]] = json.loads(LABELLED.read_text())["chunks"]
    return chunks


def titles_by(extractor: KeywordExtractor, texts: list[str]) -> list[str | None]:
    return [extractor.annotate(Chunk(i, 0.0, 1.0, t, 0, 0)).title for i, t in enumerate(texts)]


def timed(work: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--hours", type=float, default=2.0)
    args = parser.parse_args()
    model = load_segment_embedder()
    labelled = load_labelled()
    texts = [c["text"] for c in labelled]
    human = [c["title"] for c in labelled]
    static: EmbedFn = model.static
    contextual: Callable[..., Vectors] = model
    methods = {
        "YAKE (old)": KeywordExtractor(),
        "ranked phrases, contextual": KeywordExtractor(embed=contextual),
        "ranked phrases, static": KeywordExtractor(embed=static),
    }
    produced = {name: titles_by(extractor, texts) for name, extractor in methods.items()}
    load = os.getloadavg()[0]
    print(f"labelled chunks: {len(texts)}; load average {load:.1f}")
    print("| titles | embedding similarity (headline) | word F1 |")
    print("|---|---|---|")
    for name, titles in produced.items():
        sim = statistics.fmean(title_similarity(titles, human, model))
        f1 = statistics.fmean(word_f1(t, h) for t, h in zip(titles, human, strict=True))
        print(f"| {name} | {sim:.3f} | {f1:.3f} |")
    print()
    print("| human | YAKE | ranked (contextual) | ranked (static) |")
    print("|---|---|---|---|")
    for i in range(min(args.examples, len(texts))):
        row = [human[i]] + [str(produced[name][i]) for name in methods]
        print("| " + " | ".join(row) + " |")
    # Cost: a long transcript's chunks (~60 s each at 2.5 words/s), every labelled text in turn.
    n_chunks = round(args.hours * 60)
    long = [texts[i % len(texts)] for i in range(n_chunks)]
    print()
    print(f"titling {n_chunks} chunks ({args.hours:g} h of speech): wall / CPU seconds")
    for name, extractor in methods.items():

        def work(e: KeywordExtractor = extractor) -> None:
            titles_by(e, long)

        wall, cpu = timed(work)
        print(f"  {name}: {wall:.2f} / {cpu:.2f}")


if __name__ == "__main__":
    main()
