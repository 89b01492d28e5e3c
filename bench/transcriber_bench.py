"""Transcriber benchmarks (issue 5). Never part of the test suite.

    .venv/bin/python bench/transcriber_bench.py overhead [--model tiny.en] [--minutes 10]
        Starts the local stack (`mxw up`, own data directory and ports), then, alternating,
        sends the same long audio through the whole pipeline (upload → `done` on the
        WebSocket) and through raw faster-whisper in this process (same model, int8, same
        beam size and VAD setting; the model is loaded before timing, as the running
        transcriber has it loaded). Prints both wall times, the ratio, and the transcriber's
        own per-job metrics (from GET /jobs/{id}) that explain the difference.

    .venv/bin/python bench/transcriber_bench.py rtf [--models tiny.en base] [--minutes 2]
        Real-time factor (transcription seconds / audio seconds) per packaged model, int8,
        sequential and with faster_whisper.BatchedInferencePipeline.

Audio: the committed English fixtures concatenated to the requested length (16 kHz WAV).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import websockets
from mxw_local.infra import free_port
from mxw_local.stack import StackInfo
from mxw_shared.audio_decode import SAMPLE_RATE, decode_audio
from mxw_shared.devissuer import DevIssuer
from mxw_transcriber.models import ModelRegistry
from mxw_transcriber.settings import TranscriberSettings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "audio"
MXW = Path(sys.executable).with_name("mxw")


def long_audio(minutes: float) -> bytes:
    """English fixtures, one after the other, repeated to `minutes` (WAV bytes)."""
    parts = [decode_audio(FIXTURES / f, math.inf) for f in ("solar_and_bread.ogg", "short_en.ogg")]
    pause = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    unit = np.concatenate([parts[0], pause, parts[1], pause])
    repeats = int(np.ceil(minutes * 60 * SAMPLE_RATE / len(unit)))
    samples = np.tile(unit, repeats)[: int(minutes * 60 * SAMPLE_RATE)]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((samples * 32767).clip(-32768, 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def raw_seconds(model: Any, audio: Path, settings: TranscriberSettings) -> tuple[float, int]:
    """faster-whisper alone: decode + transcribe the file, as the service does."""
    started = time.perf_counter()
    segments, _info = model.transcribe(
        str(audio), beam_size=settings.beam_size, vad_filter=settings.vad_filter
    )
    count = sum(1 for _ in segments)
    return time.perf_counter() - started, count


class Stack:
    def __init__(self, model: str) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="mxw-bench-stack-"))
        self.log = self.data_dir / "stack.log"
        names = ("gateway", "notifier", "transcriber", "chunker", "embedder", "postgres", "kafka")
        cmd = [str(MXW), "up", "--data-dir", str(self.data_dir), "--whisper-model", model]
        cmd.append("--no-color")
        self.ports = {name: free_port() for name in names}
        for name, port in self.ports.items():
            cmd += [f"--{name}-port", str(port)]
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ}
            )
        deadline = time.monotonic() + 300
        while not StackInfo.path(self.data_dir).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(self.log.read_text(errors="replace")[-4000:])
            time.sleep(0.5)
        self.info = StackInfo.load(self.data_dir)
        self.token = DevIssuer.ensure(self.data_dir / "auth").mint("bench")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    async def ready(self) -> None:
        """Every service answers /readyz (the transcriber once its model is loaded)."""
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + 300
            for name in ("gateway", "notifier", "transcriber", "chunker", "embedder"):
                url = f"http://127.0.0.1:{self.ports[name]}"
                while True:
                    try:
                        if (await client.get(f"{url}/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{url} not ready")
                    await asyncio.sleep(0.5)

    async def job(self, name: str, data: bytes, model: str) -> tuple[float, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.token}"}
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=300) as client:
            response = await client.post(
                f"{self.info.gateway_url}/jobs",
                headers=headers,
                files={"file": (name, data, "audio/wav")},
                data={"model": model, "force": "true", "language": "en"},
            )
            response.raise_for_status()
            job_id = response.json()["id"]
            url = self.info.notifier_url.replace("http", "ws", 1) + f"/ws/jobs/{job_id}"
            async with websockets.connect(url, additional_headers=headers) as ws:
                async for raw in ws:
                    event = json.loads(raw)
                    if event["state"] in ("done", "failed", "cancelled"):
                        if event["state"] != "done":
                            raise RuntimeError(f"job ended {event['state']}: {event}")
                        break
            elapsed = time.perf_counter() - started
            view = await client.get(f"{self.info.gateway_url}/jobs/{job_id}", headers=headers)
            view.raise_for_status()
        return elapsed, view.json()


def overhead(args: argparse.Namespace) -> None:
    data = long_audio(args.minutes)
    audio = Path(tempfile.mkdtemp(prefix="mxw-bench-")) / "long.wav"
    audio.write_bytes(data)
    settings = TranscriberSettings()
    registry = ModelRegistry(ROOT / ".data" / "models", device="cpu", compute_type="int8")
    model = registry.load(args.model).model
    print(
        f"audio: {args.minutes:.1f} min ({len(data) / 1e6:.1f} MB WAV), model {args.model}, "
        f"beam {settings.beam_size}, vad {settings.vad_filter}, int8, cpu"
    )
    stack = Stack(args.model)
    rows: list[dict[str, Any]] = []
    try:
        asyncio.run(stack.ready())
        for run in range(1, args.runs + 1):
            p, view = asyncio.run(stack.job(f"long-{run}.wav", data, args.model))
            r, segments = raw_seconds(model, audio, settings)
            stages = {s["stage"]: s for s in view["stages"]}
            m = stages["transcribe"]["metrics"]
            row = {
                "run": run,
                "pipeline_s": round(p, 2),
                "raw_s": round(r, 2),
                "ratio": round(p / r, 3),
                "raw_segments": segments,
                "transcriber": {
                    k: m.get(k)
                    for k in (
                        "queue_wait_s",
                        "decode_s",
                        "transcribe_s",
                        "wall_s",
                        "audio_duration_s",
                        "real_time_factor",
                        "segments",
                        "segment_writes",
                        "model",
                        "device",
                    )
                },
                "stage_s": {s: stages[s]["duration_s"] for s in stages},
            }
            rows.append(row)
            print(json.dumps(row))
    finally:
        stack.stop()
    p_med = statistics.median(r["pipeline_s"] for r in rows)
    r_med = statistics.median(r["raw_s"] for r in rows)
    print(
        json.dumps(
            {
                "median_pipeline_s": p_med,
                "median_raw_s": r_med,
                "ratio": round(p_med / r_med, 3),
                "load": os.getloadavg(),
            }
        )
    )


def rtf(args: argparse.Namespace) -> None:
    data = long_audio(args.minutes)
    audio_path = Path(tempfile.mkdtemp(prefix="mxw-bench-")) / "rtf.wav"
    audio_path.write_bytes(data)
    samples = decode_audio(audio_path, math.inf)
    duration = len(samples) / SAMPLE_RATE
    from faster_whisper import BatchedInferencePipeline

    registry = ModelRegistry(ROOT / ".data" / "models", device="cpu", compute_type="int8")
    for name in args.models:
        try:
            loaded = registry.load(name)
        except Exception as exc:
            print(json.dumps({"model": name, "error": str(exc)}))
            continue
        for mode in ("sequential", "batched"):
            started = time.perf_counter()
            if mode == "sequential":
                segments, _ = loaded.model.transcribe(samples, beam_size=5, language="en")
            else:
                pipeline = BatchedInferencePipeline(loaded.model)
                segments, _ = pipeline.transcribe(
                    samples, beam_size=5, language="en", batch_size=args.batch_size
                )
            text = " ".join(s.text for s in segments)
            seconds = time.perf_counter() - started
            print(
                json.dumps(
                    {
                        "model": name,
                        "mode": mode,
                        "audio_s": round(duration, 1),
                        "seconds": round(seconds, 2),
                        "rtf": round(seconds / duration, 4),
                        "words": len(text.split()),
                        "load": os.getloadavg()[0],
                    }
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--model", default="tiny.en")
    o.add_argument("--minutes", type=float, default=10.0)
    o.add_argument("--runs", type=int, default=2)
    r = sub.add_parser("rtf")
    r.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    r.add_argument("--minutes", type=float, default=2.0)
    r.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    overhead(args) if args.cmd == "overhead" else rtf(args)


if __name__ == "__main__":
    main()
