"""Transcriber benchmarks (issues 5 and 21). Never part of the test suite.

.venv/bin/python bench/transcriber_bench.py overhead [--model base] [--minutes 10]
    Starts the local stack (`mxw up`, own data directory and ports), then, alternating,
    sends the same real English speech through the whole pipeline (upload -> `done` on
    the WebSocket, the service's default decoding) and through raw sequential
    faster-whisper in this process (same model, int8, same beam size; loaded before
    timing, as the running transcriber has it loaded). Prints both wall times, the
    ratio, both word error rates and the transcriber's own per-job metrics.

.venv/bin/python bench/transcriber_bench.py quality [--models tiny.en base] [--count 40]
    Word error rate and real-time factor per model, decoding mode and language on real
    speech (`count` asterisk-core-sounds prompts per language, conftest.make_speech_set;
    tiny.en in English only): the measurement behind the default decoding mode.

.venv/bin/python bench/transcriber_bench.py memory [--minutes 10 60 120]
    Peak RSS of a fresh process transcribing files of those lengths through the
    service's own path (handlers.transcribe_file, default settings), a minute of real
    speech in every five.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
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
from mxw_shared.contracts import Decoding, JobOptions
from mxw_shared.devissuer import DevIssuer
from mxw_transcriber.domain import DecodeSettings, transcribe
from mxw_transcriber.models import ModelRegistry
from mxw_transcriber.settings import TranscriberSettings

ROOT = Path(__file__).resolve().parents[1]
# The real-speech set lives in the root conftest.py (the tests' fixtures), imported by name.
sys.path.insert(0, str(ROOT))
testset: Any = importlib.import_module("conftest")
MXW = Path(sys.executable).with_name("mxw")


def real_speech(minutes: float) -> tuple[bytes, str]:
    """Real English prompts (conftest.make_speech_set), the whole set over and over to
    `minutes` (16-bit WAV at 8 kHz), with the text said."""
    speech = testset.make_speech_set("en", len(testset.voice_prompts("en")))
    with wave.open(str(speech.path), "rb") as clip:
        frames, rate = clip.readframes(clip.getnframes()), clip.getframerate()
    repeats = math.ceil(minutes * 60 / speech.duration_s)
    pcm = (frames * repeats)[: int(minutes * 60 * rate) * 2]
    # The reference: the prompts that fit whole in the cut audio.
    text = " ".join(
        p.text
        for r in range(repeats)
        for p in speech.prompts
        if r * speech.duration_s + p.end_s <= minutes * 60
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue(), text


def raw_sequential(model: Any, audio: Path, beam_size: int) -> tuple[float, str]:
    """faster-whisper alone, as a user would run it: decode + sequential transcription."""
    started = time.perf_counter()
    segments, _info = model.transcribe(str(audio), beam_size=beam_size, language="en")
    text = " ".join(s.text.strip() for s in segments)
    return time.perf_counter() - started, text


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
            text = await client.get(
                f"{self.info.gateway_url}/jobs/{job_id}/transcript.txt", headers=headers
            )
            text.raise_for_status()
        return elapsed, {**view.json(), "text": text.text}


def overhead(args: argparse.Namespace) -> None:
    data, said = real_speech(args.minutes)
    audio = Path(tempfile.mkdtemp(prefix="mxw-bench-")) / "long.wav"
    audio.write_bytes(data)
    settings = TranscriberSettings()
    registry = ModelRegistry(ROOT / ".data" / "models", device="cpu", compute_type="int8")
    model = registry.load(args.model).model
    print(
        f"audio: {args.minutes:.1f} min of real English speech ({len(data) / 1e6:.1f} MB WAV), "
        f"model {args.model}, beam {settings.beam_size}, int8, cpu; pipeline decoding "
        f"{settings.decoding} (batch {settings.batch_size}), raw: sequential"
    )
    stack = Stack(args.model)
    rows: list[dict[str, Any]] = []
    try:
        asyncio.run(stack.ready())
        for run in range(1, args.runs + 1):
            p, view = asyncio.run(stack.job(f"long-{run}.wav", data, args.model))
            r, raw_text = raw_sequential(model, audio, settings.beam_size)
            stages = {s["stage"]: s for s in view["stages"]}
            m = stages["transcribe"]["metrics"]
            row = {
                "run": run,
                "pipeline_s": round(p, 2),
                "raw_s": round(r, 2),
                "ratio": round(p / r, 3),
                "pipeline_wer": round(testset.word_error_rate(said, view["text"]), 4),
                "raw_wer": round(testset.word_error_rate(said, raw_text), 4),
                "transcriber": {
                    k: m.get(k)
                    for k in (
                        "decoding",
                        "queue_wait_s",
                        "transcribe_s",
                        "audio_duration_s",
                        "real_time_factor",
                        "segments",
                        "segment_writes",
                    )
                },
                "stage_s": {s: stages[s]["duration_s"] for s in stages},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
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


def synthetic_speech() -> tuple[Path, str]:
    """The committed espeak-ng English fixtures one after the other (another kind of audio
    than telephone speech: clean, synthetic, 16 kHz), with their text."""
    fixtures = ROOT / "tests" / "fixtures" / "audio"
    sentences = json.loads((fixtures / "sentences.json").read_text())
    texts = [sentences["solar_and_bread"]["text"], sentences["short_en"]["text"]]
    texts.append(" ".join(t["text"] for t in sentences["conversation"]["turns"]))
    names = ("solar_and_bread.ogg", "short_en.ogg", "conversation.ogg")
    pause = np.zeros(SAMPLE_RATE, dtype=np.float32)
    parts = [np.concatenate([decode_audio(fixtures / n, math.inf), pause]) for n in names]
    samples = np.concatenate(parts)
    path = Path(tempfile.mkdtemp(prefix="mxw-bench-")) / "synthetic.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((samples * 32767).clip(-32768, 32767).astype("<i2").tobytes())
    return path, " ".join(texts)


def quality(args: argparse.Namespace) -> None:
    registry = ModelRegistry(ROOT / ".data" / "models", device="cpu", compute_type="int8")
    for name in args.models:
        loaded = registry.load(name)
        languages = args.languages if loaded.multilingual else ["en"]
        sets: list[tuple[str, str, Path, str]] = []
        for language in languages:
            count = min(args.count, len(testset.voice_prompts(language)) - args.offset)
            speech = testset.make_speech_set(language, count, args.offset)
            sets.append(("telephone", language, speech.path, speech.text))
        sets.append(("synthetic", "en", *synthetic_speech()))
        for kind, language, path, said in sets:
            samples = decode_audio(path, math.inf)
            duration = len(samples) / SAMPLE_RATE
            for mode in (Decoding.sequential, Decoding.batched):
                options = JobOptions(language=language, decoding=mode)
                started = time.perf_counter()
                heard = transcribe(loaded.model, samples, options, DecodeSettings())
                seconds = time.perf_counter() - started
                row = {
                    "model": name,
                    "kind": kind,
                    "language": language,
                    "mode": mode.value,
                    "audio_s": round(duration, 1),
                    "wer": round(testset.word_error_rate(said, heard.text), 4),
                    "rtf": round(seconds / duration, 4),
                    "load": round(os.getloadavg()[0], 2),
                }
                print(json.dumps(row), flush=True)


PEAK = """
import json, resource, sys, time
from pathlib import Path
from mxw_shared.contracts import JobOptions
from mxw_transcriber.handlers import decode_settings, transcribe_file
from mxw_transcriber.models import ModelRegistry
from mxw_transcriber.settings import TranscriberSettings

model = ModelRegistry(Path(sys.argv[2]), device="cpu").load(sys.argv[3]).model
decode = decode_settings(TranscriberSettings())  # the service's defaults
started = time.perf_counter()
transcript, decode_s = transcribe_file(
    model, Path(sys.argv[1]), 3 * 3600, JobOptions(language="en"), decode, model_name=sys.argv[3]
)
print(json.dumps({
    "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "seconds": round(time.perf_counter() - started, 1),
    "decode_s": round(decode_s, 1),
    "segments": len(transcript.segments),
}))
"""


def memory(args: argparse.Namespace) -> None:
    import av

    minute, _ = real_speech(1.0)
    with wave.open(io.BytesIO(minute), "rb") as clip:
        speech = np.frombuffer(clip.readframes(clip.getnframes()), dtype="<i2")
        rate = clip.getframerate()
    folder = Path(tempfile.mkdtemp(prefix="mxw-bench-memory-"))
    for minutes in args.minutes:
        path = folder / f"{minutes}min.flac"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("flac", rate=rate, layout="mono")
            for m in range(int(minutes)):  # a minute of speech, then four of silence
                pcm = speech if m % 5 == 0 else np.zeros(60 * rate, dtype="<i2")
                frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = rate
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        done = subprocess.run(
            [sys.executable, "-c", PEAK, str(path), str(ROOT / ".data" / "models"), args.model],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps({"minutes": minutes, "model": args.model, **result}), flush=True)
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--model", default="base")
    o.add_argument("--minutes", type=float, default=10.0)
    o.add_argument("--runs", type=int, default=2)
    q = sub.add_parser("quality")
    q.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    q.add_argument("--languages", nargs="+", default=["en", "fr", "es", "it", "ru"])
    q.add_argument("--count", type=int, default=40)
    q.add_argument("--offset", type=int, default=0)
    m = sub.add_parser("memory")
    m.add_argument("--minutes", nargs="+", type=int, default=[10, 60, 120])
    m.add_argument("--model", default="tiny.en")
    args = parser.parse_args()
    {"overhead": overhead, "quality": quality, "memory": memory}[args.cmd](args)


if __name__ == "__main__":
    main()
