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


def test_base64_is_little_endian_float32():
    import base64
    import struct

    import numpy as np
    from mxw_embedder.domain import encode_base64

    vector = np.array([1.0, -0.5, 0.25], dtype=np.float32)
    raw = base64.b64decode(encode_base64(vector))
    assert raw == struct.pack("<3f", 1.0, -0.5, 0.25)
    # A big-endian or float64 input still comes out as little-endian float32.
    assert encode_base64(vector.astype(">f8")) == encode_base64(vector)


def test_longest_first_orders_positions_by_length():
    from mxw_embedder.domain import longest_first

    texts = ["bb", "a", "dddd", "ccc"]
    order = longest_first(texts)
    assert [texts[i] for i in order] == ["dddd", "ccc", "bb", "a"]
    assert sorted(order) == [0, 1, 2, 3]
    assert longest_first([]) == []


@pytest.mark.parametrize(
    ("column", "dims"), [("vector(384)", 384), ("vector(1536)", 1536), ("vector", None)]
)
def test_vector_column_dimensions_come_from_the_type(column, dims):
    from mxw_embedder.domain import vector_column_dimensions

    assert vector_column_dimensions(column) == dims


def test_a_column_that_is_not_a_vector_is_an_error():
    from mxw_embedder.domain import vector_column_dimensions

    with pytest.raises(ValueError, match="not a pgvector column"):
        vector_column_dimensions("real[]")


def test_dimension_mismatch_says_what_to_do():
    from mxw_embedder.domain import dimension_mismatch

    assert dimension_mismatch("m", 384, 384) is None
    assert dimension_mismatch("m", 384, None) is None
    reason = dimension_mismatch("big-model", 768, 384)
    assert reason is not None
    assert "'big-model' gives 768-dimensional vectors" in reason
    assert "vector(384)" in reason
    assert "MXW_MODEL" in reason
