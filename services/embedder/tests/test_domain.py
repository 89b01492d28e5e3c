import pytest
from mxw_embedder.domain import (
    ChunkText,
    InvalidInput,
    batches,
    chunk_embedding_text,
    normalise_input,
    validate_inputs,
)


def test_batches_cover_every_item_once_in_order():
    items = list(range(10))
    parts = list(batches(items, 4))
    assert [list(p) for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(batches([], 4)) == []
    with pytest.raises(ValueError, match="at least 1"):
        list(batches(items, 0))


def test_single_string_input_becomes_a_list_of_one():
    assert normalise_input("hello") == ["hello"]
    assert normalise_input(["a", "b"]) == ["a", "b"]


def test_valid_inputs_pass():
    validate_inputs(["a query", "x" * 10], max_inputs=2, max_chars=10)


@pytest.mark.parametrize(
    ("texts", "title", "detail"),
    [
        ([], "Empty input", "at least one"),
        (["fine", "  "], "Empty input", "input[1]"),
        (["a", "b", "c"], "Too many inputs", "holds 3 strings; at most 2"),
        (["ok", "x" * 11], "Input too long", "input[1] is 11 characters; the limit is 10"),
    ],
)
def test_invalid_inputs_say_what_is_wrong(texts, title, detail):
    with pytest.raises(InvalidInput) as caught:
        validate_inputs(texts, max_inputs=2, max_chars=10)
    assert caught.value.title == title
    assert detail in caught.value.detail


def test_chunk_is_embedded_by_its_text_alone():
    chunk = ChunkText(id=1, idx=0, text="Solar panels on the roof.", topic="Solar panels")
    assert chunk_embedding_text(chunk) == "Solar panels on the roof."
