"""One job through the running local stack vs raw faster-whisper on the same audio.

Usage (with `./mxw up --whisper-model tiny.en` running in another terminal):
    .venv/bin/python bench/e2e_job.py [AUDIO] [--model tiny.en] [--runs 3]

Prints, per run, the wall time from upload to `done` (WebSocket) and the time raw
faster-whisper takes to transcribe the same file in this process with the same model and
settings, and the ratio pipeline / raw. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx
import websockets
from mxw_local.stack import StackInfo
from mxw_shared.devissuer import DevIssuer

ROOT = Path(__file__).resolve().parents[1]


def raw_whisper_seconds(audio: Path, model_name: str) -> float:
    from faster_whisper import WhisperModel
    from mxw_transcriber.models import resolve_local
    from mxw_transcriber.settings import TranscriberSettings

    settings = TranscriberSettings()
    path = resolve_local(model_name, ROOT / ".data" / "models")
    model = WhisperModel(str(path or model_name), device="cpu", compute_type="int8")
    started = time.perf_counter()
    segments, _info = model.transcribe(str(audio), beam_size=settings.beam_size)
    list(segments)
    return time.perf_counter() - started


async def pipeline_seconds(
    info: StackInfo, token: str, name: str, data: bytes, model: str
) -> float:
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(
            f"{info.gateway_url}/jobs",
            headers=headers,
            files={"file": (name, data)},
            data={"model": model, "force": "true"},
        )
        response.raise_for_status()
        job_id = response.json()["id"]
    url = info.notifier_url.replace("http", "ws", 1) + f"/ws/jobs/{job_id}"
    async with websockets.connect(url, additional_headers=headers) as ws:
        async for raw in ws:
            event = json.loads(raw)
            if event["state"] in ("done", "failed", "cancelled"):
                if event["state"] != "done":
                    raise RuntimeError(f"job {job_id} ended {event['state']}: {event.get('error')}")
                break
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "audio", nargs="?", type=Path, default=ROOT / "tests/fixtures/audio/solar_and_bread.ogg"
    )
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".data")
    args = parser.parse_args()

    info = StackInfo.load(args.data_dir)
    token = DevIssuer.ensure(args.data_dir / "auth").mint("bench")
    pipeline, raw = [], []
    for run in range(1, args.runs + 1):
        p = asyncio.run(
            pipeline_seconds(info, token, args.audio.name, args.audio.read_bytes(), args.model)
        )
        r = raw_whisper_seconds(args.audio, args.model)
        pipeline.append(p)
        raw.append(r)
        print(f"run {run}: pipeline {p:.2f} s  raw faster-whisper {r:.2f} s  ratio {p / r:.2f}")
    p_med, r_med = statistics.median(pipeline), statistics.median(raw)
    print(f"median: pipeline {p_med:.2f} s  raw {r_med:.2f} s  ratio {p_med / r_med:.2f}")


if __name__ == "__main__":
    main()
