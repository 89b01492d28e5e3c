"""The cost of a correction: how soon search finds it, and how much work it redoes.

Usage:
    .venv/bin/python bench/edit_bench.py [--prompts 200] [--edits 5]

Starts a stack (`mxw up`, tiny.en, embedded broker, own data directory and ports), uploads
real English speech (`--prompts` asterisk-core-sounds prompts joined, conftest
.make_speech_set; 200 prompts ≈ 12 min) and waits for it. Then, side by side on the same
job:
- an edit: a segment's text corrected to a word found nowhere else (PATCH
  /jobs/{id}/segments/{i}); timed from the request until a text search finds the word;
  the chunk stage's metrics say how many chunks were re-cut and kept, the embed stage's
  how many were embedded;
- the baseline: what a correction cost without partial re-cutting, a reprocess from chunk
  (every chunk cut and embedded again), timed from the request until the job is done.
Prints each run and the medians, and the ratio baseline / edit. Never part of the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from mxw_local.harness import Stack, run_stack

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The real speech lives in the root conftest.py (the tests' fixtures); imported by name so
# that mypy, which checks bench/ strictly, does not check test helpers.
testset: Any = importlib.import_module("conftest")

USER = "bench-editor"


async def wait_done(stack: Stack, job_id: str, timeout_s: float = 1800) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=30) as client:
        while time.monotonic() - started < timeout_s:
            view = (await client.get(f"/jobs/{job_id}", headers=stack.auth(USER))).json()
            if view["state"] in ("done", "failed", "cancelled"):
                if view["state"] != "done":
                    raise RuntimeError(f"job {job_id} ended {view['state']}: {view.get('error')}")
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id} not done in {timeout_s} s")


async def stage_metrics(stack: Stack, job_id: str) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(stack.info.database_url)
    try:
        rows = await conn.fetch(
            "SELECT stage, metrics, extract(epoch FROM finished_at - started_at) AS run_s"
            " FROM job_stages WHERE job_id = $1",
            uuid.UUID(job_id),
        )
    finally:
        await conn.close()
    # A plain connection: jsonb comes as text.
    return {r["stage"]: {**json.loads(r["metrics"]), "run_s": float(r["run_s"] or 0)} for r in rows}


async def one_edit(stack: Stack, job_id: str, round_no: int) -> dict[str, Any]:
    word = f"zorblax{round_no}q"
    auth = stack.auth(USER)
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=60) as client:
        read = await client.get(f"/jobs/{job_id}/transcript", headers=auth)
        segments = read.json()["segments"]
        target = segments[(round_no * 37) % len(segments)]
        started = time.perf_counter()
        response = await client.patch(
            f"/jobs/{job_id}/segments/{target['index']}",
            headers={**auth, "If-Match": read.headers["etag"]},
            json={"text": f"{target['text']} {word}"},
        )
        response.raise_for_status()
        answered = time.perf_counter() - started
        while True:
            found = await client.get("/search", params={"q": word, "mode": "text"}, headers=auth)
            if any(str(r["job_id"]) == job_id for r in found.json()["results"]):
                break
            if time.perf_counter() - started > 300:
                raise TimeoutError("the corrected word never became searchable")
            await asyncio.sleep(0.05)
        searchable = time.perf_counter() - started
    await wait_done(stack, job_id)
    metrics = await stage_metrics(stack, job_id)
    return {
        "answer_s": round(answered, 3),
        "searchable_s": round(searchable, 3),
        "recut": metrics["chunk"].get("recut"),
        "kept": metrics["chunk"].get("kept"),
        "embedded": metrics["embed"].get("embedded", metrics["embed"].get("chunks")),
        "chunk_run_s": round(metrics["chunk"]["run_s"], 3),
        "embed_run_s": round(metrics["embed"]["run_s"], 3),
    }


async def one_rechunk(stack: Stack, job_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=60) as client:
        response = await client.post(
            f"/jobs/{job_id}/reprocess", headers=stack.auth(USER), json={"from": "chunk"}
        )
        response.raise_for_status()
    await wait_done(stack, job_id)
    done = time.perf_counter() - started
    metrics = await stage_metrics(stack, job_id)
    return {
        "done_s": round(done, 3),
        "chunks": metrics["chunk"].get("chunks"),
        "embedded": metrics["embed"].get("embedded", metrics["embed"].get("chunks")),
        "chunk_run_s": round(metrics["chunk"]["run_s"], 3),
        "embed_run_s": round(metrics["embed"]["run_s"], 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()
    speech = testset.make_speech_set("en", args.prompts)
    print(f"audio: {args.prompts} prompts, {speech.duration_s / 60:.1f} min")
    with tempfile.TemporaryDirectory() as tmp, run_stack(Path(tmp)) as stack:
        async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=600) as client:
            response = await client.post(
                "/jobs",
                headers=stack.auth(USER),
                files={"file": ("long.wav", speech.path.read_bytes(), "audio/wav")},
                data={"language": "en", "force": "true"},
            )
            response.raise_for_status()
            job_id = str(response.json()["id"])
        await wait_done(stack, job_id)
        chunks = (await stage_metrics(stack, job_id))["chunk"].get("chunks")
        print(f"job {job_id}: {chunks} chunks")
        edits, rechunks = [], []
        for round_no in range(args.edits):
            edits.append(await one_edit(stack, job_id, round_no))
            print("edit     ", edits[-1])
            rechunks.append(await one_rechunk(stack, job_id))
            print("rechunk  ", rechunks[-1])
    edit_s = statistics.median(e["searchable_s"] for e in edits)
    full_s = statistics.median(r["done_s"] for r in rechunks)
    recut = statistics.median(e["recut"] or 0 for e in edits)
    print(
        f"median: edit searchable in {edit_s:.2f} s (re-cut {recut} of {chunks} chunks), "
        f"full re-chunk done in {full_s:.2f} s; baseline / edit = {full_s / edit_s:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
