"""Custom vocabulary (issue 21): how often rare names are heard right with and without
hotwords, per Whisper model, and that an unrelated vocabulary does not hurt real speech.

The rare-name set is tests/fixtures/audio/rare_names (espeak-ng reading sentences that each
hold one rare name or term, the name spelled as it sounds; names.json has what is written).
The vocabulary given is every name of the set (one user's list: 12 terms), so each clip is
also heard with 11 hotwords it does not contain. Real speech is the root conftest's `speech`
clip (Debian asterisk-core-sounds, English), heard with and without the same vocabulary.

    .venv/bin/python bench/hotwords_bench.py [--models tiny.en base] [--decoding batched] [-v]

Prints one JSON line per model and a Markdown table; CT2_FORCE_CPU_ISA picks CTranslate2's
kernels (GENERIC, AVX, AVX2, AVX512) as in the tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from mxw_shared.audio_decode import decode_audio
from mxw_shared.contracts import Decoding, JobOptions
from mxw_transcriber.domain import DecodeSettings, transcribe
from mxw_transcriber.models import ModelRegistry

ROOT = Path(__file__).resolve().parents[1]
SET = ROOT / "tests" / "fixtures" / "audio" / "rare_names"
sys.path.insert(0, str(ROOT))
# The real speech and the word error rate live in the root conftest.py (the tests' fixtures);
# imported by name so that mypy, which checks bench/ strictly, does not check test helpers.
testset: Any = importlib.import_module("conftest")


def load_set() -> list[dict[str, str]]:
    items = json.loads((SET / "names.json").read_text())
    return [{"key": k, **v} for k, v in items.items() if not k.startswith("_")]


def name_heard(name: str, heard: str) -> bool:
    """The name's words, in order and together, among the words heard (case and punctuation
    ignored, as the word error rate compares words)."""
    want, got = testset.speech_words(name), testset.speech_words(heard)
    return any(got[i : i + len(want)] == want for i in range(len(got) - len(want) + 1))


def run_model(name: str, decode: DecodeSettings, verbose: bool) -> dict[str, Any]:
    registry = ModelRegistry(ROOT / ".data" / "models", device="cpu")
    loaded = registry.load(name)
    items = load_set()
    vocabulary = tuple(item["name"] for item in items)
    result: dict[str, Any] = {"model": name, "clips": len(items), "vocabulary": len(vocabulary)}
    started = time.perf_counter()
    for label, options in (
        ("without", JobOptions()),
        ("with", JobOptions(hotwords=vocabulary)),
    ):
        heard_names, leaks, errors, words = 0, 0, 0.0, 0
        for item in items:
            audio = decode_audio(SET / f"{item['key']}.ogg", 60)
            text = transcribe(loaded.model, audio, options, decode).text
            hit = name_heard(item["name"], text)
            heard_names += hit
            # A term of the vocabulary not said in this clip, heard in it all the same.
            leaks += any(name_heard(other, text) for other in vocabulary if other != item["name"])
            n = len(testset.speech_words(item["text"]))
            errors += testset.word_error_rate(item["text"], text) * n
            words += n
            if verbose:
                print(f"  {name} {label:7} {'+' if hit else '-'} {item['name']:10} {text!r}")
        result[f"names_{label}"] = heard_names
        result[f"leaks_{label}"] = leaks
        result[f"wer_{label}"] = round(errors / words, 3)
    clip = testset.speech_clip("en")
    audio = decode_audio(clip.path, 3600)
    for label, options in (
        ("without", JobOptions()),
        ("with", JobOptions(hotwords=vocabulary)),
    ):
        text = transcribe(loaded.model, audio, options, decode).text
        result[f"real_wer_{label}"] = round(clip.wer(text), 3)
        if verbose:
            print(f"  {name} real {label:7} {text!r}")
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["isa"] = os.environ.get("CT2_FORCE_CPU_ISA", "auto")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--decoding", choices=["batched", "sequential"], default="batched")
    parser.add_argument("-v", "--verbose", action="store_true", help="every transcript")
    args = parser.parse_args()
    decode = DecodeSettings(decoding=Decoding(args.decoding))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    rows = []
    for name in args.models:
        row = run_model(name, decode, args.verbose)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print()
    print(
        "| model | names heard without | with | WER set without | with |"
        " clips with an unsaid term heard | real speech WER without |"
        " with (unrelated vocabulary) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["clips"]
        print(
            f"| {r['model']} | {r['names_without']}/{n} | {r['names_with']}/{n} |"
            f" {r['wer_without']:.3f} | {r['wer_with']:.3f} | {r['leaks_with']}/{n} |"
            f" {r['real_wer_without']:.3f} | {r['real_wer_with']:.3f} |"
        )


if __name__ == "__main__":
    main()
