"""What each listed Whisper model (WHISPER_MODELS) hears in real speech, and where it puts the
words: the asterisk-core-sounds prompts of the root conftest's `speech` fixture.

Word times are checked against a reference read off the signal: each prompt is a recording
with silence around it, and its speech runs from the first to the last 10-ms frame louder
than 3 % of its loudest (the rule conftest's `_trim_silence` uses). The first word a model
puts in a prompt must start near that onset, the last must end near that offset, and no word
may sit in the silence between prompts. Measured (2026-12-03, AVX2, int8, beam 5): base's
mean error 0.18 s (en) and 0.12 s (fr), worst 0.38 s, none in silence; tiny.en 0.12 s, worst
0.18 s. With a wrong `alignment_heads` in base's config.json the bounds break: tiny.en's heads
(in range, wrong model) 0.32 s / 0.28 s mean, worst 0.61 s / 0.76 s, one word in silence;
heads of layers 0-1 1.4 s / 1.5 s mean, one and two prompts left without words; small's heads
(layers past base's 6) crash CTranslate2 (SIGSEGV). The same under CT2_FORCE_CPU_ISA=GENERIC
(base 0.19 s / 0.12 s, worst 0.36 s; tiny.en's heads 0.31 s / 0.30 s, worst 0.61 / 0.76 s).
Marked `model_words`: `./mxw test` runs them again under another CTranslate2 CPU ISA."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from mxw_shared.contracts import WHISPER_MODELS, JobOptions
from mxw_transcriber.domain import DecodeSettings, Transcript, transcribe
from mxw_transcriber.models import ModelRegistry

pytestmark = pytest.mark.model_words

SR = 16_000
# Bounds with room over the measured figures above, below the wrong-heads ones.
MEAN_ERROR_S = 0.25  # first word's start against the onset, last word's end against the offset
MAX_ERROR_S = 0.5
IN_SILENCE_S = 0.1  # a word's middle this far outside every prompt's speech is in silence
WER_AT_MOST = {("tiny.en", "en"): 0.15, ("base", "en"): 0.1, ("base", "fr"): 0.2}
# Another multilingual model against base on the same speech (none listed today: small's
# packages are cut short; see docs/benchmarks.md, "Models (issue 21)").
ALIGN_MARGIN_S = 0.05
WER_MARGIN = 0.0


def _languages(name: str) -> tuple[str, ...]:
    return ("en",) if name.endswith(".en") else ("en", "fr")


CASES = [(name, lang) for name in WHISPER_MODELS for lang in _languages(name)]
OTHER_MULTILINGUAL = [n for n in WHISPER_MODELS if n != "base" and not n.endswith(".en")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return ModelRegistry(tmp_path_factory.mktemp("models"), device="cpu", compute_type="int8")


@pytest.fixture(scope="module")
def heard(registry: ModelRegistry, speech: Any) -> Any:
    """heard(model, language) -> (Transcript, Speech, audio): each transcribed once."""
    from faster_whisper.audio import decode_audio

    done: dict[tuple[str, str], tuple[Transcript, Any, np.ndarray[Any, Any]]] = {}

    def get(name: str, language: str) -> tuple[Transcript, Any, np.ndarray[Any, Any]]:
        if (name, language) not in done:
            clip = speech(language)
            audio = decode_audio(str(clip.path), sampling_rate=SR)
            model = registry.load(name).model
            options = JobOptions(language=language, word_timestamps=True)
            done[name, language] = (
                transcribe(model, audio, options, DecodeSettings()),
                clip,
                audio,
            )
        return done[name, language]

    return get


def speech_spans(audio: np.ndarray[Any, Any], clip: Any) -> list[tuple[float, float]]:
    """(onset, offset) seconds of each prompt's speech, from the signal's energy."""
    spans = []
    for prompt in clip.prompts:
        part = audio[int(prompt.start_s * SR) : int(prompt.end_s * SR)]
        frame = SR // 100
        count = len(part) // frame
        rms = np.sqrt((part[: count * frame].reshape(count, frame) ** 2).mean(axis=1))
        loud = np.flatnonzero(rms > 0.03 * rms.max())
        spans.append(
            (prompt.start_s + loud[0] * frame / SR, prompt.start_s + (loud[-1] + 1) * frame / SR)
        )
    return spans


def alignment(transcript: Transcript, clip: Any, audio: np.ndarray[Any, Any]) -> dict[str, Any]:
    """Onset/offset errors per prompt, prompts without words, words in silence."""
    words = [w for s in transcript.segments for w in (s.words or ())]
    spans = speech_spans(audio, clip)
    errors: list[float] = []
    wordless = []
    for (onset, offset), prompt in zip(spans, clip.prompts, strict=True):
        # A prompt's words: their middles within it (the pauses are 0.5 s; a quarter each side).
        mine = [
            w
            for w in words
            if prompt.start_s - 0.25 <= (w.start_s + w.end_s) / 2 <= prompt.end_s + 0.25
        ]
        if not mine:
            wordless.append(prompt.text)
            continue
        errors += [abs(mine[0].start_s - onset), abs(mine[-1].end_s - offset)]
    in_silence = [
        w.word
        for w in words
        if not any(
            on - IN_SILENCE_S <= (w.start_s + w.end_s) / 2 <= off + IN_SILENCE_S
            for on, off in spans
        )
    ]
    return {
        "mean": float(np.mean(errors)) if errors else float("inf"),
        "max": float(np.max(errors)) if errors else float("inf"),
        "wordless": wordless,
        "in_silence": in_silence,
    }


@pytest.mark.parametrize(("name", "language"), CASES)
def test_word_times_follow_the_speech(heard: Any, name: str, language: str) -> None:
    transcript, clip, audio = heard(name, language)
    found = alignment(transcript, clip, audio)
    assert not found["wordless"], f"{name} put no word in these prompts"
    assert not found["in_silence"], f"{name} put words in the pauses: {found['in_silence']}"
    assert found["mean"] <= MEAN_ERROR_S, found
    assert found["max"] <= MAX_ERROR_S, found


@pytest.mark.parametrize(("name", "language"), CASES)
def test_the_words_heard(heard: Any, name: str, language: str) -> None:
    transcript, clip, _ = heard(name, language)
    text = " ".join(s.text for s in transcript.segments)
    assert clip.wer(text) <= WER_AT_MOST.get((name, language), 0.2), text


@pytest.mark.parametrize("name", OTHER_MULTILINGUAL)
@pytest.mark.parametrize("language", ["en", "fr"])
def test_another_multilingual_model_aligns_and_hears_as_well_as_base(
    heard: Any, name: str, language: str
) -> None:
    base = alignment(*heard("base", language))
    other = alignment(*heard(name, language))
    assert other["mean"] <= base["mean"] + ALIGN_MARGIN_S, (other, base)
    base_text = " ".join(s.text for s in heard("base", language)[0].segments)
    other_text = " ".join(s.text for s in heard(name, language)[0].segments)
    clip = heard(name, language)[1]
    assert clip.wer(other_text) <= clip.wer(base_text) + WER_MARGIN, (other_text, base_text)
