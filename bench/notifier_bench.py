"""Notifier fan-out: latency from publishing job.status to receipt at the client, and memory
per 1k connected clients, for one replica.

    .venv/bin/python bench/notifier_bench.py [--clients 1000 5000 10000] [--seconds 20]

Starts embedded Postgres and tansu, one notifier as its own process (uvicorn, default
settings), N jobs of 100 users, and N WebSocket clients (`/ws/jobs/{id}`, one per job) spread
over worker processes. Every job then gets one status event per second, published straight
to Kafka the way the outbox relay does (seq numbered, so the feed never reads history), each
carrying its publication time: latency = receipt time - publication time, same clock.
Memory: the notifier's RSS with N idle clients minus its RSS before any client.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
USERS = 100


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---- client worker (own process) ----


def client_worker(
    url: str, feeds: list[tuple[str, str]], ready: Any, start: Any, stop: Any, out: Any
) -> None:
    raise_fd_limit()
    asyncio.run(_clients(url, feeds, ready, start, stop, out))


async def _clients(
    url: str, feeds: list[tuple[str, str]], ready: Any, start: Any, stop: Any, out: Any
) -> None:
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    sent_at: list[float] = []
    received = 0
    handshakes = asyncio.Semaphore(100)

    async def open_one(job: str, token: str) -> Any:
        async with handshakes:
            return await connect(
                f"{url}/ws/jobs/{job}?access_token={token}",
                compression=None,
                max_queue=None,
                ping_interval=None,
                open_timeout=120,
            )

    sockets = await asyncio.gather(*(open_one(j, t) for j, t in feeds))
    # The load generator's own pauses must not count as the notifier's latency: its
    # thousands of long-lived connection objects leave the cyclic GC nothing to find.
    gc.freeze()
    ready.set()

    async def read(ws: Any) -> None:
        nonlocal received
        async for raw in ws:
            now = time.time()
            received += 1
            if start.is_set():
                published = float(json.loads(raw)["message"])
                latencies.append(now - published)
                sent_at.append(published)

    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    await asyncio.to_thread(stop.wait)  # a multiprocessing event, set by the parent
    for task in readers:
        task.cancel()
    out.put({"latencies": latencies, "sent_at": sent_at, "received": received})
    for ws in sockets:
        await ws.close()


# ---- the run ----


async def publish_load(
    bootstrap: str,
    jobs: list[tuple[uuid.UUID, str]],
    seconds: float,
    state: dict[str, int],
    rate: float = 1.0,
) -> int:
    """`rate` events per job per second (1: one each second), spread over ten slices of
    each second; below 1 the jobs take turns."""
    from aiokafka import AIOKafkaProducer
    from mxw_shared import topics
    from mxw_shared.contracts import Envelope, JobState, JobStatus, Stage

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=2)
    await producer.start()
    sent = 0
    slices = 10
    per_slice = max(1, round(len(jobs) * rate / slices))
    turn = 0
    try:
        deadline = time.monotonic() + seconds
        tick = time.monotonic()
        while time.monotonic() < deadline:
            for _ in range(slices):
                futures = []
                chosen = [jobs[(turn + k) % len(jobs)] for k in range(per_slice)]
                turn = (turn + per_slice) % len(jobs)
                for job_id, owner in chosen:
                    state[str(job_id)] = seq = state.get(str(job_id), 0) + 1
                    event = JobStatus(
                        job_id=job_id, owner_id=owner, stage=Stage.transcribe,
                        state=JobState.running, progress=0.5, message=repr(time.time()), seq=seq,
                    )  # fmt: skip
                    envelope = Envelope.for_event(event, source="bench")
                    futures.append(
                        await producer.send(
                            topics.JOB_STATUS,
                            value=event.model_dump_json().encode(),
                            key=str(job_id).encode(),
                            headers=[(k, v.encode()) for k, v in envelope.to_headers().items()],
                        )
                    )
                await asyncio.gather(*futures)
                sent += len(futures)
                tick += 1.0 / slices
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
    finally:
        await producer.stop()
    return sent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run_one(
    infra: dict[str, str], issuer: Any, clients: int, seconds: float, workers: int, rate: float
) -> dict[str, Any]:
    from mxw_local.infra import free_port
    from mxw_shared.db import create_pool

    port = free_port()
    env = {
        **os.environ,
        "MXW_DATABASE_URL": infra["dsn"],
        "MXW_KAFKA_BOOTSTRAP_SERVERS": infra["bootstrap"],
        "MXW_KAFKA_IDEMPOTENT_PRODUCER": "false",
        "MXW_AUTH_JWKS_URL": infra["jwks"],
        "MXW_PORT": str(port),
        "MXW_LOG_LEVEL": "WARNING",
        "MXW_MAX_CONNECTIONS_PER_USER": "1000000",
        "MXW_INSTANCE_ID": f"bench-{clients}",
    }
    notifier = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mxw_notifier.main", env=env, cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if (await http.get(f"{base}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "notifier not ready"
                await asyncio.sleep(0.2)
        process = psutil.Process(notifier.pid)
        rss_idle = process.memory_info().rss

        pool = await create_pool(infra["dsn"], 1, 2)
        jobs: list[tuple[uuid.UUID, str]] = [
            (uuid.uuid4(), f"bench-u{i % USERS}") for i in range(clients)
        ]
        await pool.executemany(
            "INSERT INTO jobs (id, owner_id, filename, audio_uri, sha256, options) "
            "VALUES ($1, $2, 'bench.wav', 'file:///bench', $3, '{}'::jsonb)",
            [(j, o, uuid.uuid4().hex * 2) for j, o in jobs],
        )
        await pool.close()
        tokens = {f"bench-u{i}": issuer.mint(f"bench-u{i}") for i in range(USERS)}
        feeds = [(str(j), tokens[o]) for j, o in jobs]

        ctx = mp.get_context("spawn")
        start, stop = ctx.Event(), ctx.Event()
        out = ctx.Queue()
        readies = []
        procs = []
        connect_started = time.monotonic()
        for w in range(workers):
            ready = ctx.Event()
            readies.append(ready)
            p = ctx.Process(
                target=client_worker,
                args=(f"ws://127.0.0.1:{port}", feeds[w::workers], ready, start, stop, out),
            )
            p.start()
            procs.append(p)
        for ready in readies:
            while not ready.wait(0.5):
                assert all(p.is_alive() for p in procs), "a client worker died"
        connect_s = time.monotonic() - connect_started
        await asyncio.sleep(2)
        rss_connected = process.memory_info().rss

        state: dict[str, int] = {}
        await publish_load(infra["bootstrap"], jobs, 3, state, rate)  # warm-up
        start.set()
        process.cpu_percent()
        profiler = None
        if os.environ.get("BENCH_PYSPY"):  # e.g. BENCH_PYSPY="uvx py-spy": a flame graph
            profiler = await asyncio.create_subprocess_exec(
                *os.environ["BENCH_PYSPY"].split(), "record", "--pid", str(notifier.pid),
                "--duration", str(int(seconds)), "--format", "raw",
                "-o", str(ROOT / f".data/notifier-{clients}.pyspy.txt"),
            )  # fmt: skip
        sent = await publish_load(infra["bootstrap"], jobs, seconds, state, rate)
        if profiler is not None:
            await profiler.wait()
        await asyncio.sleep(3)  # the tail arrives
        cpu = process.cpu_percent()
        rss_loaded = process.memory_info().rss
        stop.set()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
        latencies = [x for r in results for x in r["latencies"]]
        # Per 5-second window of publication: shows whether a tail is a start-up transient
        # or steady.
        pairs = [p for r in results for p in zip(r["sent_at"], r["latencies"], strict=True)]
        first = min((t for t, _ in pairs), default=0.0)
        windows: dict[int, list[float]] = {}
        for t, latency in pairs:
            windows.setdefault(int((t - first) // 5), []).append(latency)
        return {
            "clients": clients,
            "events_per_s": round(clients * rate),
            "connect_s": round(connect_s, 1),
            "events_sent_measured": sent,
            "events_received_measured": len(latencies),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
            "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
            "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
            "p99_ms_per_5s": [
                round(percentile(w, 0.99) * 1000) for _, w in sorted(windows.items())
            ],
            "notifier_cpu_percent": round(cpu, 0),
            "rss_idle_mib": round(rss_idle / 2**20, 1),
            "rss_connected_mib": round(rss_connected / 2**20, 1),
            "rss_loaded_mib": round(rss_loaded / 2**20, 1),
            "mib_per_1k_connections": round(
                (rss_connected - rss_idle) / 2**20 / (clients / 1000), 1
            ),
        }
    finally:
        notifier.terminate()
        await asyncio.wait_for(notifier.wait(), 60)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument(
        "--rate", type=float, default=1.0, help="events per job per second (the goal: 1)"
    )
    args = parser.parse_args()
    raise_fd_limit()

    from mxw_local.infra import EmbeddedKafka, EmbeddedPostgres, free_port
    from mxw_shared.devissuer import DevIssuer
    from mxw_shared.migrate import migrate

    root = Path(tempfile.mkdtemp(prefix="notifier-bench-"))
    postgres = EmbeddedPostgres(root / "pg", free_port())
    kafka = EmbeddedKafka(free_port(), log_path=root / "tansu.log")
    dsn = postgres.start()
    try:
        kafka.start()
        await migrate(dsn)
        issuer = DevIssuer.ensure(root / "auth")
        infra = {
            "dsn": dsn,
            "bootstrap": kafka.bootstrap_servers,
            "jwks": (root / "auth" / "jwks.json").as_uri(),
        }
        print(f"cpu: {os.cpu_count()} cores; load before: {os.getloadavg()}", flush=True)
        for clients in args.clients:
            result = await run_one(infra, issuer, clients, args.seconds, args.workers, args.rate)
            print(json.dumps(result), flush=True)
    finally:
        kafka.stop()
        postgres.stop()


if __name__ == "__main__":
    asyncio.run(main())
