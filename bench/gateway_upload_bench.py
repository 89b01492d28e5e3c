"""Gateway uploads: a 1 GB file (gateway RSS growth, throughput against a plain local copy
of the same bytes) and job-creation latency under 50 concurrent uploaders of short files.

    .venv/bin/python bench/gateway_upload_bench.py [--size-mb 1024] [--uploaders 50]
                                                   [--rounds 4] [--keep]

Starts its own embedded PostgreSQL and tansu broker (mxw_local.infra) and the gateway as a
child process (`python -m mxw_gateway.main`) on free 127.0.0.1 ports, in a temporary
directory that is removed afterwards. The big file is a valid WAV (16 kHz mono PCM, a header
and low-level noise written in 1 MiB pieces), so the gateway's probe accepts it and the
upload ends in a real job. Every step has a time limit. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from mxw_local.infra import EmbeddedKafka, EmbeddedPostgres, free_port
from mxw_shared.devissuer import DevIssuer
from mxw_shared.migrate import migrate

ROOT = Path(__file__).resolve().parents[1]
SHORT = ROOT / "tests" / "fixtures" / "audio" / "short_en.ogg"
SHORT_SIZE = SHORT.stat().st_size
PIECE = 1024 * 1024


def write_wav(path: Path, size_bytes: int) -> None:
    """A PCM WAV of about `size_bytes`: 44-byte header, then noise in 1 MiB pieces."""
    data_bytes = (size_bytes - 44) // 2 * 2
    rate, channels, bits = 16_000, 1, 16
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * 2, 2, bits)
    header += b"data" + struct.pack("<I", data_bytes)
    noise = bytes((i * 7919 + 13) % 7 for i in range(PIECE))  # quiet, not all zeros
    with path.open("wb") as fh:
        fh.write(header)
        left = data_bytes
        while left > 0:
            fh.write(noise[: min(PIECE, left)])
            left -= min(PIECE, left)


def plain_copy_seconds(src: Path, dst: Path) -> float:
    """Read and write the same bytes in 1 MiB pieces, then fsync (the gateway fsyncs too)."""
    started = time.perf_counter()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while piece := fin.read(PIECE):
            fout.write(piece)
        fout.flush()
        os.fsync(fout.fileno())
    elapsed = time.perf_counter() - started
    dst.unlink()
    return elapsed


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


class RssSampler:
    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid)[0])
            time.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def multipart_file(
    path: Path, size: int, boundary: str, filename: str, fields: dict[str, str]
) -> tuple[AsyncIterator[bytes], int]:
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        with path.open("rb") as fh:
            while piece := await asyncio.to_thread(fh.read, PIECE):
                yield piece
        yield tail

    return body(), len(head) + size + len(tail)


async def upload(
    client: httpx.AsyncClient,
    token: str,
    path: Path,
    filename: str,
    force: bool = True,
    size: int = SHORT_SIZE,
) -> httpx.Response:
    boundary = uuid.uuid4().hex
    fields = {"force": "true"} if force else {}
    body, length = await multipart_file(path, size, boundary, filename, fields)
    return await client.post(
        "/jobs",
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(length),
        },
    )


async def big_upload(
    base_url: str, pid: int, issuer: DevIssuer, big: Path, big_size: int
) -> dict[str, float]:
    token = issuer.mint("bench-big")
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        # Warm up: auth, the pool, the probe's libraries, so the baseline is steady state.
        for _ in range(3):
            response = await upload(client, token, SHORT, "warmup.ogg")
            assert response.status_code in (200, 202), response.text
        await asyncio.sleep(1.0)
        baseline, _ = rss_kib(pid)
        with RssSampler(pid) as sampler:
            cpu_before, client_before = cpu_s(pid), time.process_time()
            started = time.perf_counter()
            response = await upload(client, token, big, "big.wav", size=big_size)
            elapsed = time.perf_counter() - started
            gateway_cpu = cpu_s(pid) - cpu_before
            client_cpu = time.process_time() - client_before
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["size_bytes"] == big_size, job
    return {
        "bytes": float(big_size),
        "upload_s": elapsed,
        "gateway_cpu_s": gateway_cpu,
        "client_cpu_s": client_cpu,
        "rss_baseline_mib": baseline / 1024,
        "rss_peak_mib": sampler.peak / 1024,
        "rss_growth_mib": (sampler.peak - baseline) / 1024,
    }


async def concurrent_uploads(
    base_url: str, issuer: DevIssuer, uploaders: int, rounds: int
) -> dict[str, float]:
    tokens = [issuer.mint(f"bench-user-{i}") for i in range(uploaders)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    # Idle connections expire here before uvicorn's 5 s keep-alive closes them under us.
    limits = httpx.Limits(
        max_connections=uploaders + 5, max_keepalive_connections=uploaders, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:

        async def uploader(token: str) -> None:
            for _ in range(rounds):
                started = time.perf_counter()
                response = await upload(client, token, SHORT, "short.ogg")
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        # One upload each first: users are created on first sight, connections opened.
        await asyncio.gather(*(upload(client, t, SHORT, "first.ogg") for t in tokens))
        started = time.perf_counter()
        await asyncio.gather(*(uploader(t) for t in tokens))
        wall = time.perf_counter() - started
    latencies.sort()
    assert set(statuses) == {202}, statuses

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, round(p / 100 * (len(latencies) - 1)))]

    return {
        "uploads": float(len(latencies)),
        "p50_ms": pct(50) * 1000,
        "p90_ms": pct(90) * 1000,
        "p99_ms": pct(99) * 1000,
        "max_ms": latencies[-1] * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "jobs_per_s": len(latencies) / wall,
    }


def start_gateway(
    work: Path, dsn: str, bootstrap: str, issuer: DevIssuer
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "MXW_DATABASE_URL": dsn,
        "MXW_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MXW_KAFKA_IDEMPOTENT_PRODUCER": "false",
        "MXW_BLOB_ROOT": str(work / "blobs"),
        "MXW_AUTH_JWKS_URL": issuer.jwks_url,
        "MXW_PORT": str(port),
        "MXW_HOST": "127.0.0.1",
        "MXW_LOG_LEVEL": "WARNING",
        "MXW_DB_POOL_MAX": "20",
        "MXW_MAX_UPLOAD_BYTES": str(4 * 1024**3),
        # The bench measures the upload path, not the per-user limits.
        "MXW_RATE_LIMITS": json.dumps({"uploads": [1e6, 100000], "search": [1e6, 100000]}),
    }
    log = (work / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mxw_gateway.main"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {(work / 'gateway.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return proc, base_url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("gateway did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--uploaders", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mxw-gateway-bench-"))
    postgres = EmbeddedPostgres(work / "pg", free_port())
    kafka = EmbeddedKafka(free_port(), log_path=work / "tansu.log")
    gateway: subprocess.Popen[bytes] | None = None
    try:
        dsn = postgres.start()
        kafka.start()
        asyncio.run(migrate(dsn))
        issuer = DevIssuer.ensure(work / "auth")
        gateway, base_url = start_gateway(work, dsn, kafka.bootstrap_servers, issuer)

        big = work / "big.wav"
        write_wav(big, args.size_mb * 1024 * 1024)
        copies = [plain_copy_seconds(big, work / "copy.bin") for _ in range(2)]
        copy_s = min(copies)
        result = asyncio.run(
            asyncio.wait_for(
                big_upload(base_url, gateway.pid, issuer, big, big.stat().st_size), 900
            )
        )
        size_mb = result["bytes"] / 1e6
        print(f"file: {result['bytes'] / 1024**2:.0f} MiB WAV")
        print(
            f"plain copy (read+write+fsync, best of 2): {copy_s:.2f} s = "
            f"{size_mb / copy_s:.0f} MB/s"
        )
        print(
            f"gateway upload (HTTP multipart -> blob store + fsync -> probe -> job): "
            f"{result['upload_s']:.2f} s = {size_mb / result['upload_s']:.0f} MB/s; "
            f"ratio to the copy: {copy_s / result['upload_s']:.2f}x; CPU during it: gateway "
            f"{result['gateway_cpu_s']:.1f} s, this client {result['client_cpu_s']:.1f} s"
        )
        print(
            f"gateway RSS: baseline {result['rss_baseline_mib']:.1f} MiB, peak during upload "
            f"{result['rss_peak_mib']:.1f} MiB, growth {result['rss_growth_mib']:.1f} MiB"
        )
        big.unlink()

        lat = asyncio.run(
            asyncio.wait_for(concurrent_uploads(base_url, issuer, args.uploaders, args.rounds), 600)
        )
        print(
            f"{args.uploaders} concurrent uploaders x {args.rounds} uploads of "
            f"{SHORT.name} ({SHORT.stat().st_size} B): {lat['uploads']:.0f} jobs, "
            f"p50 {lat['p50_ms']:.0f} ms, p90 {lat['p90_ms']:.0f} ms, "
            f"p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms, "
            f"{lat['jobs_per_s']:.1f} jobs/s"
        )
    finally:
        if gateway is not None:
            gateway.terminate()
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
        kafka.stop()
        postgres.stop(quiet=True)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
