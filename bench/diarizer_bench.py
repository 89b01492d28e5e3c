"""Diarizer benchmarks (issue 20). Never part of the test suite.

    .venv/bin/python bench/diarizer_bench.py der [--seeds 0 1]
        Diarization error rate (pyannote.metrics, collar ±0.25 s) and found vs true speaker
        count on the labelled set: every pair of the four asterisk-core-sounds people
        (12 turns each, ~2 min), every three (8 turns each), all four (6 turns each).

    .venv/bin/python bench/diarizer_bench.py rtf [--minutes 3 10]
        Real-time factor (diarize seconds / audio seconds) on the CPU for conversations of
        three voices, the model loaded and one short diarization run before timing; with
        each file's DER.

    .venv/bin/python bench/diarizer_bench.py rss [--minutes 10 60]
        Peak resident memory of one diarization, each in a fresh subprocess: the process's
        RSS with the model loaded and the audio decoded, then its peak (ru_maxrss) after
        `diarize`; with its time and DER (over 20 minutes senko clusters with UMAP + HDBSCAN
        instead of spectral clustering).

Audio: conftest.conversation_clip (real voices taking turns, with the true turns; 8-kHz WAV
decoded to 16 kHz by mxw_shared.audio_decode as an upload would be).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mxw_diarizer.domain import Diarization, diarize
from mxw_diarizer.models import SpeakerCounts, SpeakerModel
from mxw_diarizer.settings import DiarizerSettings
from mxw_shared.audio_decode import decode_audio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The labelled set lives in the root conftest.py (the tests' fixtures); imported by name so
# that mypy, which checks bench/ strictly, does not check the test helpers.
testset: Any = importlib.import_module("conftest")
Conversation = Any  # testset.Conversation

THREE = ("en", "fr", "it")


def load() -> SpeakerModel:
    model = SpeakerModel(DiarizerSettings(warmup=False, device="cpu"))
    print(f"model {model.name} on {model.device}, loaded in {model.load_s:.1f} s", flush=True)
    return model


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {name}, load average {os.getloadavg()[0]:.1f}"


def of_length(minutes: float, voices: tuple[str, ...] = THREE) -> Conversation:
    """A conversation of `voices` at least `minutes` long (turns added until it is)."""
    turns = max(1, int(minutes * 60 / (5.5 * len(voices))))
    while True:
        clip = testset.conversation_clip(voices, turns, 0)
        if clip.duration_s >= minutes * 60:
            return clip
        turns = math.ceil(turns * minutes * 60 / clip.duration_s) + 1


def scored(clip: Conversation, found: Diarization) -> str:
    error = testset.diarization_error(clip.turns, found.turns, clip.duration_s)
    return (
        f"DER {error['diarization error rate']:.3f} (missed {error['missed detection']:.1f} s, "
        f"false alarm {error['false alarm']:.1f} s, confusion {error['confusion']:.1f} s "
        f"of {error['total']:.1f} s) speakers {len(found.voices)}/{len(clip.voices)}"
    )


def der(args: argparse.Namespace) -> None:
    print(machine())
    model = load()
    cases = (
        [(p, 12) for p in itertools.combinations(testset.CONVERSATION_VOICES, 2)]
        + [(p, 8) for p in itertools.combinations(testset.CONVERSATION_VOICES, 3)]
        + [(testset.CONVERSATION_VOICES, 6)]
    )
    rates: dict[int, list[float]] = {}
    wrong_count: dict[int, int] = {}
    print(f"collar ±{testset.DER_COLLAR_S} s")
    for (voices, turns), seed in itertools.product(cases, args.seeds):
        clip = testset.conversation_clip(voices, turns, seed)
        found = diarize(model, decode_audio(clip.path, math.inf), SpeakerCounts())
        error = testset.diarization_error(clip.turns, found.turns, clip.duration_s)
        rates.setdefault(len(voices), []).append(error["diarization error rate"])
        wrong_count[len(voices)] = wrong_count.get(len(voices), 0) + (
            len(found.voices) != len(voices)
        )
        print(f"{'+'.join(voices):12} seed {seed} {clip.duration_s:5.0f} s  {scored(clip, found)}")
    for n, values in sorted(rates.items()):
        values.sort()
        print(
            f"{n} voices: {len(values)} files, DER median {values[len(values) // 2]:.3f}, "
            f"mean {sum(values) / len(values):.3f}, max {values[-1]:.3f}; "
            f"speaker count wrong in {wrong_count[n]}"
        )


def rtf(args: argparse.Namespace) -> None:
    print(machine())
    model = load()
    # warmup=False, as the tests load it: the first diarization pays torch's first-call
    # costs, so one short one runs before timing (the service warms up at load).
    warm = testset.conversation_clip(THREE, 2, 99)
    started = time.perf_counter()
    diarize(model, decode_audio(warm.path, math.inf), SpeakerCounts())
    cold = time.perf_counter() - started
    print(f"first diarization ({warm.duration_s:.0f} s of audio, cold): {cold:.1f} s")
    for minutes in args.minutes:
        clip = of_length(minutes)
        samples = decode_audio(clip.path, math.inf)
        started = time.perf_counter()
        found = diarize(model, samples, SpeakerCounts())
        took = time.perf_counter() - started
        print(
            f"{clip.duration_s:6.0f} s of {'+'.join(clip.voices)}: diarize {took:6.1f} s, "
            f"RTF {took / clip.duration_s:.3f}; {scored(clip, found)}",
            flush=True,
        )


def rss(args: argparse.Namespace) -> None:
    print(machine())
    for minutes in args.minutes:
        clip = of_length(minutes)
        truth = clip.path.with_suffix(".truth.json")
        truth.write_text(json.dumps([[t.start_s, t.end_s, t.speaker] for t in clip.turns]))
        done = subprocess.run(
            [sys.executable, __file__, "_one", str(clip.path), "--voices", ",".join(clip.voices)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(f"{minutes} min: the child failed: {done.stderr[-2000:]}")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        before, peak, took = result["before_mib"], result["peak_mib"], result["diarize_s"]
        print(
            f"{clip.duration_s:6.0f} s: RSS with the model and audio {before:.0f} MiB, peak "
            f"{peak:.0f} MiB (+{peak - before:.0f} MiB in diarize); diarize {took:.1f} s, "
            f"RTF {took / clip.duration_s:.3f}; {result['score']}",
            flush=True,
        )


def one(args: argparse.Namespace) -> None:
    """In a fresh process: load, decode, measure RSS, diarize, measure the peak."""
    import psutil
    from mxw_shared.speakers import Turn

    path = Path(args.path)
    model = SpeakerModel(DiarizerSettings(warmup=False, device="cpu"))
    samples = decode_audio(path, math.inf)
    before = psutil.Process().memory_info().rss / 2**20
    started = time.perf_counter()
    found = diarize(model, samples, SpeakerCounts())
    took = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    turns = tuple(
        Turn(s, e, who) for s, e, who in json.loads(path.with_suffix(".truth.json").read_text())
    )
    clip = testset.Conversation(path, tuple(args.voices.split(",")), turns, len(samples) / 16000)
    out: dict[str, Any] = {
        "before_mib": before,
        "peak_mib": peak,
        "diarize_s": took,
        "score": scored(clip, found),
    }
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("der")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.set_defaults(run=der)
    p = sub.add_parser("rtf")
    p.add_argument("--minutes", type=float, nargs="+", default=[3.0, 10.0])
    p.set_defaults(run=rtf)
    p = sub.add_parser("rss")
    p.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    p.set_defaults(run=rss)
    p = sub.add_parser("_one")
    p.add_argument("path")
    p.add_argument("--voices", required=True)
    p.set_defaults(run=one)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
