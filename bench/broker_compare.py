"""The embedded broker (tansu) and Apache Kafka side by side, in one run. Never part of the
test suite.

Usage:
    .venv/bin/python bench/broker_compare.py [--minutes 10] [--runs 2] [--burst 100]

Starts two stacks at once (`mxw up`, tiny.en, own data directories and ports): one on the
embedded broker, one on Apache Kafka (`--broker kafka`: one KRaft node, the idempotent
producer on, acks=all), then, alternating between them so that load drifting on the machine
hits both alike:

- pipeline overhead on long audio (bench/transcriber_bench.py's audio: the English fixtures
  concatenated to `--minutes`): the job's wall time (upload → `done` on the WebSocket) minus
  the stage work the services recorded (`run_s` of transcribe, chunk and embed, from
  GET /jobs/{id}/timing); what is left is upload, the outbox hops through the broker, queue
  waits and the WebSocket. The stages' queue waits (event written → picked up) are printed
  apart: that is where the broker is;
- throughput of a burst of `--burst` short jobs (tests/fixtures/audio/short_en.ogg, one user
  per upload, all sent at once): jobs per second from the first upload to the last `done`,
  and per-job end-to-end percentiles.

Prints every figure per broker, and the ratios Apache Kafka / embedded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import websockets
from mxw_local.harness import Stack, run_stack
from mxw_local.stack import BrokerKind
from transcriber_bench import long_audio  # bench/ is the script's own directory on sys.path

ROOT = Path(__file__).resolve().parents[1]
SHORT = (ROOT / "tests" / "fixtures" / "audio" / "short_en.ogg").read_bytes()
BROKERS: tuple[BrokerKind, ...] = ("embedded", "kafka")
MODEL = "tiny.en"


async def ready(stack: Stack, timeout_s: float = 300) -> None:
    """Every service answers /readyz (the transcriber once its model is loaded)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        for service in ("gateway", "notifier", "transcriber", "chunker", "embedder"):
            while True:
                try:
                    if (await client.get(f"{stack.url(service)}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{service} not ready:\n{stack.log_tail()}")
                await asyncio.sleep(0.5)


async def timing(stack: Stack, job_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=30) as client:
        response = await client.get(f"/jobs/{job_id}/timing", headers=stack.auth("admin", True))
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


async def long_job(stack: Stack, data: bytes) -> dict[str, Any]:
    """Upload → `done` on the WebSocket, as bench/e2e_job.py times it; then the services'
    own record of the stages."""
    headers = stack.auth("bench")
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=300) as client:
        response = await client.post(
            "/jobs",
            headers=headers,
            files={"file": ("long.wav", data, "audio/wav")},
            data={"model": MODEL, "force": "true", "language": "en"},
        )
        response.raise_for_status()
        job_id = str(response.json()["id"])
    url = stack.info.notifier_url.replace("http", "ws", 1) + f"/ws/jobs/{job_id}"
    async with websockets.connect(url, additional_headers=headers) as ws:
        async for raw in ws:
            state = json.loads(raw)["state"]
            if state in ("done", "failed", "cancelled"):
                if state != "done":
                    raise RuntimeError(f"job {job_id} ended {state}")
                break
    wall = time.perf_counter() - started
    stages = {s["stage"]: s for s in (await timing(stack, job_id))["stages"]}
    work = sum(s["run_s"] for s in stages.values())
    return {
        "wall_s": round(wall, 2),
        "stage_work_s": round(work, 2),
        "overhead_s": round(wall - work, 2),
        "queue_wait_s": round(sum(s["queue_wait_s"] for s in stages.values()), 3),
        "run_s": {name: s["run_s"] for name, s in stages.items()},
    }


async def burst(stack: Stack, count: int, timeout_s: float) -> dict[str, Any]:
    started = time.monotonic()
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(
        base_url=stack.info.gateway_url, timeout=300, limits=limits
    ) as client:

        async def upload(i: int) -> str:
            response = await client.post(
                "/jobs",
                headers=stack.auth(f"burst-{i:03d}"),
                files={"file": (f"burst-{i}.ogg", SHORT, "audio/ogg")},
                data={"language": "en", "force": "true", "model": MODEL},
            )
            response.raise_for_status()
            return str(response.json()["id"])

        ids = await asyncio.gather(*(upload(i) for i in range(count)))
    accepted = time.monotonic() - started
    conn = await asyncpg.connect(stack.info.database_url)
    try:
        while True:
            rows = await conn.fetch(
                "SELECT stage, state FROM job_stages WHERE job_id = ANY($1::uuid[])"
                " AND (state = 'failed' OR (stage = 'embed' AND state = 'done'))",
                ids,
            )
            if failed := [r for r in rows if r["state"] == "failed"]:
                raise RuntimeError(f"{len(failed)} burst jobs failed")
            if len(rows) == count:
                break
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{len(rows)}/{count} burst jobs done after {timeout_s} s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    elapsed = time.monotonic() - started
    totals = sorted([(await timing(stack, job_id))["total_s"] for job_id in ids])
    waits = []
    for job_id in ids:
        waits.append(sum(s["queue_wait_s"] for s in (await timing(stack, job_id))["stages"]))
    return {
        "jobs": count,
        "accepted_s": round(accepted, 1),
        "last_done_s": round(elapsed, 1),
        "jobs_per_s": round(count / elapsed, 3),
        "job_total_s_p50": round(statistics.median(totals), 2),
        "job_total_s_p95": round(totals[int(0.95 * (len(totals) - 1))], 2),
        "job_total_s_max": round(totals[-1], 2),
        "queue_wait_s_p50": round(statistics.median(waits), 3),
    }


def ratio(kafka: float, embedded: float) -> float | None:
    return round(kafka / embedded, 3) if embedded else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--runs", type=int, default=2, help="long jobs per broker")
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--burst-timeout-s", type=float, default=1800)
    args = parser.parse_args()
    data = long_audio(args.minutes)
    print(f"load before: {os.getloadavg()}; audio {args.minutes} min ({len(data) / 1e6:.1f} MB)")
    env = {"MXW_MAX_CONNECTIONS_PER_USER": "20"}
    results: dict[str, dict[str, Any]] = {b: {"long": []} for b in BROKERS}
    with ExitStack() as stacks:
        running: dict[BrokerKind, Stack] = {}
        for broker in BROKERS:
            data_dir = Path(stacks.enter_context(tempfile.TemporaryDirectory()))
            started = time.monotonic()
            running[broker] = stacks.enter_context(
                run_stack(data_dir, env, whisper_model=MODEL, broker=broker)
            )
            asyncio.run(ready(running[broker]))
            results[broker]["start_s"] = round(time.monotonic() - started, 1)
            print(f"{broker}: stack up and ready in {results[broker]['start_s']} s")
        for run in range(1, args.runs + 1):
            for broker in BROKERS:
                row = asyncio.run(long_job(running[broker], data))
                results[broker]["long"].append(row)
                print(f"long job, run {run}, {broker}: {json.dumps(row)}")
        for broker in BROKERS:
            row = asyncio.run(burst(running[broker], args.burst, args.burst_timeout_s))
            results[broker]["burst"] = row
            print(f"burst, {broker}: {json.dumps(row)}")
    summary: dict[str, Any] = {"load_after": os.getloadavg()}
    for broker in BROKERS:
        long_rows = results[broker]["long"]
        summary[broker] = {
            "start_s": results[broker]["start_s"],
            "long_wall_s_median": statistics.median(r["wall_s"] for r in long_rows),
            "long_overhead_s_median": statistics.median(r["overhead_s"] for r in long_rows),
            "long_queue_wait_s_median": statistics.median(r["queue_wait_s"] for r in long_rows),
            "burst_jobs_per_s": results[broker]["burst"]["jobs_per_s"],
            "burst_job_total_s_p50": results[broker]["burst"]["job_total_s_p50"],
        }
    kafka, embedded = summary["kafka"], summary["embedded"]
    summary["kafka / embedded"] = {key: ratio(kafka[key], embedded[key]) for key in embedded}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
