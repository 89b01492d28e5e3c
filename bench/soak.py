"""Soak on localhost: many concurrent uploads and WebSocket watchers against a fresh stack.

Usage:
    .venv/bin/python bench/soak.py [--uploads 100] [--watchers-per-job 10] [--limit-s 300]

Starts its own stack (`mxw up`, tiny.en, a temporary data directory), then at once: every
upload (short speech, one user per upload) and, as each is accepted, `--watchers-per-job`
WebSocket clients following that job. Watchers reconnect after a failure, as
real clients do. Bounded: everything stops at `--limit-s`. Prints the error counts (failed
attempts), jobs completed, watchers that saw `done`, time until the last job finished,
and the resident memory of every service at the start and the end. Never part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import websockets
from mxw_local.harness import Stack, run_stack

ROOT = Path(__file__).resolve().parents[1]
AUDIO = (ROOT / "tests" / "fixtures" / "audio" / "short_en.ogg").read_bytes()
SERVICES = ("gateway", "notifier", "transcriber", "diarizer", "chunker", "embedder")


def rss_mib(stack: Stack) -> dict[str, float]:
    sizes = {}
    for service in SERVICES:
        pid = stack.service_pid(service)
        sizes[service] = round(psutil.Process(pid).memory_info().rss / 2**20, 1) if pid else 0.0
    return sizes


async def watch(
    stack: Stack, user: str, job_id: str, errors: Counter[str], deadline: float
) -> str | None:
    """Follow a job like a real client: reconnect after a failure (with jitter) until the
    job ended or the soak's time is up. Every failed attempt counts as an error."""
    url = stack.info.notifier_url.replace("http", "ws", 1) + f"/ws/jobs/{job_id}"
    last: str | None = None
    while time.monotonic() < deadline:
        try:
            async with websockets.connect(
                url, additional_headers=stack.auth(user), open_timeout=30
            ) as ws:
                async for raw in ws:
                    last = json.loads(raw).get("state")
                    if last in ("done", "failed", "cancelled"):
                        return last
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            errors[f"ws:{type(exc).__name__}"] += 1
            await asyncio.sleep(random.uniform(1.0, 3.0))
    return last


async def one_user(
    stack: Stack,
    client: httpx.AsyncClient,
    index: int,
    watchers: int,
    errors: Counter[str],
    limit_s: float,
) -> tuple[str | None, list[str | None]]:
    user = f"soak-{index:03d}"
    try:
        response = await client.post(
            "/jobs",
            headers=stack.auth(user),
            files={"file": (f"soak-{index}.ogg", AUDIO, "audio/ogg")},
            data={"language": "en"},
        )
    except httpx.HTTPError as exc:
        errors[f"upload:{type(exc).__name__}"] += 1
        return None, []
    if response.status_code != 202:
        errors[f"upload:{response.status_code}"] += 1
        return None, []
    job_id = response.json()["id"]
    deadline = time.monotonic() + limit_s
    seen = await asyncio.gather(
        *(watch(stack, user, job_id, errors, deadline) for _ in range(watchers))
    )
    return job_id, list(seen)


async def soak(stack: Stack, uploads: int, watchers: int, limit_s: float) -> dict[str, object]:
    errors: Counter[str] = Counter()
    rss_start = rss_mib(stack)
    started = time.monotonic()
    limits = httpx.Limits(max_connections=uploads)
    async with httpx.AsyncClient(
        base_url=stack.info.gateway_url, timeout=120, limits=limits
    ) as client:
        tasks = [
            asyncio.create_task(one_user(stack, client, i, watchers, errors, limit_s))
            for i in range(uploads)
        ]
        done, pending = await asyncio.wait(tasks, timeout=limit_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.monotonic() - started
    results = [t.result() for t in done]
    job_ids = [job for job, _ in results if job]
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=30) as client:
        states: Counter[str] = Counter()
        for job_id in job_ids:
            response = await client.get(f"/jobs/{job_id}", headers=stack.auth("admin", True))
            states[response.json().get("state", "?") if response.is_success else "?"] += 1
    return {
        "uploads": uploads,
        "watchers": uploads * watchers,
        "accepted": len(job_ids),
        "job_states": dict(states),
        "watchers_saw_done": sum(1 for _, seen in results for s in seen if s == "done"),
        "errors (failed attempts, retried)": dict(errors),
        "timed_out_users": len(pending),
        "seconds_to_last_done": round(elapsed, 1),
        "rss_mib_start": rss_start,
        "rss_mib_end": rss_mib(stack),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--watchers-per-job", type=int, default=10)
    parser.add_argument("--limit-s", type=float, default=300)
    args = parser.parse_args()
    # A thousand sockets on each side: lift the descriptor limit for us and the stack.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = {"MXW_MAX_CONNECTIONS_PER_USER": str(max(20, args.watchers_per_job))}
    with tempfile.TemporaryDirectory() as tmp, run_stack(Path(tmp), env) as stack:
        report = asyncio.run(soak(stack, args.uploads, args.watchers_per_job, args.limit_s))
    for key, value in report.items():
        print(f"{key:>22}: {value}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
