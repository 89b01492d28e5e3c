"""The word error rate that the model-word tests assert (conftest.py, `wer`)."""

import pytest


def test_identical_words_have_no_errors_whatever_the_case_and_punctuation(wer) -> None:
    assert wer("Please try again.", "please, TRY again") == 0.0


def test_substitutions_deletions_and_insertions_each_count_one(wer) -> None:
    reference = "the party you are trying to reach"  # 7 words
    assert wer(reference, "the party or trying to reach") == pytest.approx(2 / 7)  # 1 S + 1 D
    assert wer(reference, "the party you are trying to reach now") == pytest.approx(1 / 7)
    assert wer(reference, "") == 1.0
    assert wer("a b", "x y z w") == 2.0  # insertions can take it past 1


def test_apostrophes_and_accents_stay_inside_words(wer) -> None:
    assert wer("Il n'y a qu'un seul participant", "il ny a quun seul participant") == 0.0
    assert wer("personnel invalides", "personnelle invalid") == 1.0
    assert wer("à la conférence", "a la conference") == pytest.approx(2 / 3)


def test_a_reference_without_words_is_refused(wer) -> None:
    with pytest.raises(ValueError, match="no words"):
        wer("...", "anything")
