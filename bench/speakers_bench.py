"""Time to done with and without speakers, on the same audio, through a fresh local stack.

Usage:
    .venv/bin/python bench/speakers_bench.py [--minutes 3] [--runs 3] [--model tiny.en]

Starts its own stack (`mxw up`, a temporary data directory), builds a conversation of the
two voices of tests/fixtures/audio/conversation.ogg repeated to `--minutes`, then uploads it
alternately without and with `speakers=true`, one job at a time, and follows each to `done`
over the WebSocket. Diarization runs beside transcription, so it should add less than its
own CPU time: printed are the median times to done, their ratio, and the diarize stage's
own wall time, with the ratio (added time) / (diarize time). Never part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import websockets
from mxw_local.harness import Stack, run_stack
from mxw_shared.audio_decode import SAMPLE_RATE, decode_audio

ROOT = Path(__file__).resolve().parents[1]
CONVERSATION = ROOT / "tests" / "fixtures" / "audio" / "conversation.ogg"


def conversation_wav(minutes: float) -> bytes:
    unit = decode_audio(CONVERSATION, 3600)
    samples = np.tile(unit, int(np.ceil(minutes * 60 * SAMPLE_RATE / len(unit))))
    pcm = (samples[: int(minutes * 60 * SAMPLE_RATE)] * 32767).astype("<i2").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm)
    return buffer.getvalue()


async def one_job(stack: Stack, audio: bytes, speakers: bool, run: int) -> tuple[float, float]:
    """(seconds from upload to done, the diarize stage's wall seconds or 0)."""
    user = f"bench-{run}-{int(speakers)}"
    form = {"language": "en", "force": "true", **({"speakers": "true"} if speakers else {})}
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=120) as client:
        response = await client.post(
            "/jobs",
            headers=stack.auth(user),
            files={"file": ("talk.wav", audio, "audio/wav")},
            data=form,
        )
        response.raise_for_status()
        job_id = response.json()["id"]
        url = stack.info.notifier_url.replace("http", "ws", 1) + f"/ws/jobs/{job_id}"
        async with websockets.connect(url, additional_headers=stack.auth(user)) as ws:
            async for raw in ws:
                state = json.loads(raw)["state"]
                if state in ("done", "failed", "cancelled"):
                    break
        elapsed = time.perf_counter() - started
        assert state == "done", state
        job = (await client.get(f"/jobs/{job_id}", headers=stack.auth(user))).json()
    diarize = next(s for s in job["stages"] if s["stage"] == "diarize")
    return elapsed, float(diarize.get("duration_s") or 0.0)


async def bench(stack: Stack, minutes: float, runs: int) -> None:
    audio = conversation_wav(minutes)
    await one_job(stack, audio, True, -1)  # loads every model once, outside the figures
    plain: list[float] = []
    diarized: list[float] = []
    diarize_s: list[float] = []
    for run in range(runs):
        plain.append((await one_job(stack, audio, False, run))[0])
        total, own = await one_job(stack, audio, True, run)
        diarized.append(total)
        diarize_s.append(own)
    p, d, own = statistics.median(plain), statistics.median(diarized), statistics.median(diarize_s)
    print(f"audio: {minutes:g} min conversation (2 voices), runs: {runs}")
    print(f"time to done without speakers: {p:.1f} s (runs: {[round(x, 1) for x in plain]})")
    print(f"time to done with speakers:    {d:.1f} s (runs: {[round(x, 1) for x in diarized]})")
    print(f"ratio with / without:          {d / p:.2f}")
    print(f"diarize stage wall time:       {own:.1f} s")
    print(f"added / diarize time:          {(d - p) / own:.2f}" if own else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="tiny.en")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, run_stack(Path(tmp), whisper_model=args.model) as s:
        asyncio.run(bench(s, args.minutes, args.runs))


if __name__ == "__main__":
    main()
