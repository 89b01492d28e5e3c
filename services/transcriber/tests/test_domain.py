"""Transcription with the real tiny.en model: options are honoured or rejected, progress is
reported, silence gives an empty transcript, non-audio is a decode error. Words are checked
on real human speech (the `speech` fixture) as a word error rate with a margin."""

from pathlib import Path

import numpy as np
import pytest
from mxw_shared.audio import ContainerNotAllowed
from mxw_shared.audio_decode import decode_audio
from mxw_shared.contracts import JobOptions, Task
from mxw_transcriber.domain import (
    DecodeSettings,
    UnsupportedOptions,
    check_options,
    transcribe,
)
from mxw_transcriber.models import LoadedModel, ModelRegistry

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "audio"
# tiny.en's word error rate on the English clip was 4.8 % under every CPU ISA (AVX2, AVX,
# GENERIC); three times that still fails a wrong, truncated or repeated transcript.
WER_MARGIN = 0.15


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return ModelRegistry(tmp_path_factory.mktemp("models"), device="cpu").load("tiny.en")


@pytest.mark.model_words
def test_speech_is_transcribed_with_progress(tiny: LoadedModel, speech) -> None:
    clip = speech("en")
    audio = decode_audio(clip.path, 3600)
    fractions: list[float] = []
    transcript = transcribe(tiny.model, audio, JobOptions(), DecodeSettings(), fractions.append)

    assert transcript.language == "en"
    assert transcript.language_probability is None, "an English-only model detects nothing"
    assert transcript.duration_s == pytest.approx(len(audio) / 16000, abs=0.01)
    assert clip.wer(transcript.text) <= WER_MARGIN, transcript.text
    assert fractions
    assert fractions == sorted(fractions)
    assert 0 < fractions[-1] <= 1
    for seg in transcript.segments:
        assert 0 <= seg.start_s < seg.end_s <= transcript.duration_s
        assert seg.words is None
        assert seg.avg_logprob is not None
        assert seg.avg_logprob < 0


def test_an_exception_from_the_progress_callback_stops_the_work(tiny: LoadedModel) -> None:
    audio = decode_audio(FIXTURES / "solar_and_bread.ogg", 3600)

    class Stop(Exception):
        pass

    def cancel(_: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        transcribe(tiny.model, audio, JobOptions(), DecodeSettings(), cancel)


def test_silence_gives_an_empty_transcript(tiny: LoadedModel) -> None:
    silence = np.zeros(16000 * 4, dtype=np.float32)
    transcript = transcribe(tiny.model, silence, JobOptions(), DecodeSettings())
    assert transcript.segments == ()
    assert transcript.text == ""
    assert transcript.duration_s == 4.0


def test_text_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are notes, not audio\n" * 20)
    # FFmpeg takes text for its `tty` demuxer, which the container allow-list refuses.
    with pytest.raises(ContainerNotAllowed):
        decode_audio(path, 3600)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (JobOptions(language="de"), "English-only"),
        (JobOptions(task=Task.translate), "cannot translate"),
        (JobOptions(language="xx"), "not known"),
    ],
)
def test_options_an_english_only_model_cannot_honour_are_rejected(
    options: JobOptions, message: str
) -> None:
    with pytest.raises(UnsupportedOptions, match=message):
        check_options(options, multilingual=False, model_name="tiny.en")


def test_multilingual_models_accept_languages_and_translation() -> None:
    check_options(JobOptions(language="de", task=Task.translate), True, "base")
    check_options(JobOptions(language="en"), False, "tiny.en")


@pytest.mark.model_words
def test_a_resumed_transcription_continues_after_the_given_point(
    tiny: LoadedModel, speech, wer
) -> None:
    from mxw_transcriber.domain import Resume

    clip = speech("en")
    audio = decode_audio(clip.path, 3600)
    # Resume in the silence after the first prompt, as if a segment had ended there.
    first_prompt, *rest_prompts = clip.prompts
    cut_s = (first_prompt.end_s + rest_prompts[0].start_s) / 2
    seen: list[float] = []
    rest = transcribe(
        tiny.model,
        audio,
        JobOptions(word_timestamps=True),
        DecodeSettings(),
        resume=Resume(
            start_s=cut_s,
            next_idx=1,
            language="en",
            language_probability=None,
        ),
        on_segment=lambda _segment, position: seen.append(position),
    )
    assert rest.segments
    assert [s.idx for s in rest.segments] == list(range(1, len(rest.segments) + 1))
    assert rest.duration_s == pytest.approx(clip.duration_s, abs=0.01)
    for seg in rest.segments:
        assert cut_s <= seg.start_s < seg.end_s <= rest.duration_s
        for w in seg.words or ():
            assert seg.start_s <= w.start_s <= w.end_s <= seg.end_s
    assert seen == sorted(seen)
    assert seen[-1] > cut_s
    # What comes after the first prompt is heard, and nothing of it: words of the first
    # prompt would count as insertions.
    later = " ".join(p.text for p in rest_prompts)
    assert wer(later, rest.text) <= WER_MARGIN, rest.text
