"""The pure join of transcript words with speaker turns (mxw_shared.speakers)."""

from __future__ import annotations

from typing import Any

import pytest
from mxw_shared.speakers import (
    VOICE_MATCH_THRESHOLD,
    Turn,
    Turns,
    attribute,
    default_name,
    reassign,
    speaker_label,
    talk_time,
)

A, B = "SPEAKER_01", "SPEAKER_02"


def words(*spans: tuple[float, float, str]) -> list[dict[str, Any]]:
    return [{"start": s, "end": e, "word": w, "probability": 0.9} for s, e, w in spans]


def test_labels_and_default_names() -> None:
    assert [speaker_label(i) for i in (0, 1, 11)] == ["SPEAKER_01", "SPEAKER_02", "SPEAKER_12"]
    assert default_name("SPEAKER_02") == "Speaker 2"
    assert default_name("Alice") == "Alice"


def test_a_segment_is_split_where_the_speaker_changes() -> None:
    turns = Turns([Turn(0.0, 2.0, A), Turn(2.2, 5.0, B)])
    said = words(
        (0.1, 0.5, " Hello"), (0.6, 1.9, " there."), (2.3, 2.8, " Hi"), (2.9, 4.5, " you.")
    )
    lines = attribute(7, 0.0, 4.8, "Hello there. Hi you.", said, turns)
    assert [(ln.speaker, ln.text) for ln in lines] == [(A, "Hello there."), (B, "Hi you.")]
    # The segment's own bounds at its ends, the words' times inside it.
    assert (lines[0].start_s, lines[0].end_s) == (0.0, 1.9)
    assert (lines[1].start_s, lines[1].end_s) == (2.3, 4.8)
    assert all(ln.segment_idx == 7 for ln in lines)
    assert lines[0].words is not None
    assert [w.speaker for w in lines[0].words] == [A, A]
    assert talk_time(lines) == pytest.approx({A: 0.4 + 1.3, B: 0.5 + 1.6})


def test_one_speaker_one_line_and_back_and_forth_three_lines() -> None:
    turns = Turns([Turn(0.0, 1.0, A), Turn(1.0, 2.0, B), Turn(2.0, 3.0, A)])
    same = attribute(0, 0.0, 0.9, "one two", words((0.0, 0.4, " one"), (0.5, 0.9, " two")), turns)
    assert [(ln.speaker, ln.text) for ln in same] == [(A, "one two")]
    mixed = words((0.2, 0.8, " a"), (1.2, 1.8, " b"), (2.2, 2.8, " c"))
    assert [ln.speaker for ln in attribute(0, 0.0, 3.0, "a b c", mixed, turns)] == [A, B, A]


def test_the_midpoint_decides_a_word_across_a_boundary() -> None:
    turns = Turns([Turn(0.0, 2.0, A), Turn(2.0, 4.0, B)])
    assert turns.speaker_at(1.5, 2.4) == A  # midpoint 1.95
    assert turns.speaker_at(1.7, 2.5) == B  # midpoint 2.1


def test_outside_every_turn_a_word_goes_to_the_overlapping_then_the_nearest_turn() -> None:
    turns = Turns([Turn(1.0, 2.0, A), Turn(5.0, 6.0, B)])
    # Starts before the first turn (its midpoint is outside): the turn it overlaps.
    assert turns.speaker_at(0.2, 1.2) == A
    # In the gap, touching no turn: the nearest one.
    assert turns.speaker_at(2.3, 2.6) == A
    assert turns.speaker_at(4.3, 4.7) == B
    assert turns.speaker_at(8.0, 9.0) == B  # after the last turn
    assert turns.speaker_at(0.0, 0.2) == A  # before the first
    lines = attribute(0, 2.2, 4.8, "x y", words((2.2, 2.5, " x"), (4.5, 4.8, " y")), turns)
    assert [(ln.speaker, ln.text) for ln in lines] == [(A, "x"), (B, "y")]


def test_overlapping_turns_the_latest_started_wins() -> None:
    turns = Turns([Turn(0.0, 5.0, A), Turn(3.0, 4.0, B)])
    assert turns.speaker_at(3.4, 3.6) == B
    assert turns.speaker_at(4.4, 4.6) == A


def test_a_segment_without_words_gets_the_speaker_it_overlaps_most() -> None:
    turns = Turns([Turn(0.0, 1.0, A), Turn(1.0, 4.0, B)])
    (line,) = attribute(3, 0.5, 3.0, "text", None, turns)
    assert (line.speaker, line.words) == (B, None)
    (nearest,) = attribute(3, 6.0, 7.0, "later", [], turns)
    assert nearest.speaker == B


def test_no_turns_one_line_without_speaker() -> None:
    empty = Turns([Turn(1.0, 1.0, A)])  # zero length: dropped
    assert not empty
    assert empty.speaker_at(0.0, 1.0) is None
    (line,) = attribute(0, 0.0, 1.0, "x", words((0.0, 1.0, " x")), empty)
    assert line.speaker is None
    assert line.words is not None


def test_reassign_cuts_the_covered_turns_around_the_new_one() -> None:
    turns = [Turn(0.0, 4.0, A), Turn(4.0, 8.0, B), Turn(8.0, 9.0, A)]
    assert reassign(turns, 3.0, 5.0, "SPEAKER_03") == [
        Turn(0.0, 3.0, A),
        Turn(3.0, 5.0, "SPEAKER_03"),
        Turn(5.0, 8.0, B),
        Turn(8.0, 9.0, A),
    ]
    # Inside one turn: that turn on both sides.
    assert reassign(turns, 1.0, 2.0, B)[:3] == [
        Turn(0.0, 1.0, A),
        Turn(1.0, 2.0, B),
        Turn(2.0, 4.0, A),
    ]
    # Covering whole turns: they go.
    assert reassign(turns, 3.5, 9.0, B) == [Turn(0.0, 3.5, A), Turn(3.5, 9.0, B)]
    # The join then reads the moved segment as the new speaker.
    moved = Turns(reassign(turns, 4.0, 8.0, A))
    assert moved.speaker_at(5.0, 6.0) == A


def test_the_voice_match_threshold_is_a_cosine() -> None:
    assert 0.0 < VOICE_MATCH_THRESHOLD < 1.0
