"""The diarization error rate the diarizer's tests and bench use (root conftest.py, `der`:
pyannote.metrics with a ±0.25-s collar), checked on cases worked out by hand."""

from typing import Any

import pytest
from mxw_shared.speakers import Turn


def rate(der: Any, truth: list[Turn], found: list[Turn], duration: float, **kw: Any) -> float:
    return float(der(truth, found, duration, **kw)["diarization error rate"])


TRUTH = [Turn(0.0, 10.0, "en"), Turn(10.0, 20.0, "fr")]


def test_a_perfect_diarization_under_other_names_scores_zero(der: Any) -> None:
    found = [Turn(0.0, 10.0, "SPEAKER_02"), Turn(10.0, 20.0, "SPEAKER_01")]
    assert rate(der, TRUTH, found, 20.0) == 0.0


def test_confusion_missed_and_false_alarm_without_collar(der: Any) -> None:
    # 2 s of fr given to en's speaker: 2 / 20.
    late = [Turn(0.0, 12.0, "A"), Turn(12.0, 20.0, "B")]
    assert rate(der, TRUTH, late, 20.0, collar_s=0.0) == pytest.approx(0.1)
    # Everyone one speaker: half the speech confused.
    assert rate(der, TRUTH, [Turn(0.0, 20.0, "A")], 20.0, collar_s=0.0) == pytest.approx(0.5)
    # Nothing found: all missed.
    detail = der(TRUTH, [], 20.0, collar_s=0.0)
    assert (detail["missed detection"], detail["diarization error rate"]) == (20.0, 1.0)
    # 5 s of speech where there is silence: false alarm over the reference speech.
    extra = [*TRUTH, Turn(20.0, 25.0, "B")]
    detail = der(TRUTH, extra, 25.0, collar_s=0.0)
    assert (detail["false alarm"], detail["diarization error rate"]) == (5.0, 0.25)


def test_the_collar_forgives_a_quarter_second_each_side_of_each_boundary(der: Any) -> None:
    # Boundaries at 0, 10 and 20: 0.25 + 0.5 + 0.25 s leave the 20 s of speech.
    late = [Turn(0.0, 12.0, "A"), Turn(12.0, 20.0, "B")]
    detail = der(TRUTH, late, 20.0)
    assert detail["total"] == pytest.approx(19.0)
    assert detail["confusion"] == pytest.approx(1.75)  # 10.25 -> 12
    # A change found 0.2 s late is inside the collar: no error.
    assert rate(der, TRUTH, [Turn(0.0, 10.2, "A"), Turn(10.2, 20.0, "B")], 20.0) == 0.0


def test_speakers_are_mapped_one_to_one(der: Any) -> None:
    # Three found speakers for two: the third one's speech is confusion.
    truth = [Turn(0.0, 10.0, "en"), Turn(10.0, 20.0, "fr"), Turn(20.0, 30.0, "en")]
    found = [Turn(0.0, 10.0, "A"), Turn(10.0, 20.0, "B"), Turn(20.0, 30.0, "C")]
    assert rate(der, truth, found, 30.0, collar_s=0.0) == pytest.approx(10 / 30)
