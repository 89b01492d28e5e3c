"""The ONNX Runtime path, with the real packaged all-MiniLM-L6-v2 exported into a test
cache: same vectors as PyTorch on every shape, the export reused and rebuilt when it must
be, and models it cannot export staying on PyTorch (or failing start-up when ONNX is
demanded)."""

from pathlib import Path

import numpy as np
import pytest
from mxw_embedder.models import DEFAULT_MODEL, ModelUnavailable, load_embedder, resolve_model_path
from mxw_embedder.onnx_runtime import (
    OnnxUnsupported,
    cache_file,
    load_onnx_encoder,
    plan_export,
)

TEXTS = [
    "",
    "hi",
    "The cat sat on the mat.",
    "word " * 1000,  # cut at the model's 256 tokens, as encode() cuts it
    "Zürich, naïve café — 東京 and emoji 🎧 in one line.",
    *[f"Sentence {i} about rivers, " + "and the sea " * i for i in range(40)],
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def torch_embedder():
    return load_embedder(DEFAULT_MODEL, "cpu", "torch")


@pytest.fixture(scope="module")
def onnx_embedder(cache_dir):
    return load_embedder(DEFAULT_MODEL, "cpu", "onnx", cache_dir)


def test_the_packaged_model_exports_with_mean_pooling_and_normalisation(torch_embedder):
    plan = plan_export(torch_embedder._model)
    assert plan.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert plan.pooling == "mean"
    assert plan.normalize is True


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_onnx_vectors_equal_pytorch_vectors_on_every_shape(
    onnx_embedder, torch_embedder, batch_size
):
    assert onnx_embedder.runtime == "onnx"
    assert torch_embedder.runtime == "torch"
    got = onnx_embedder.embed(TEXTS, batch_size=batch_size)
    want = torch_embedder.embed(TEXTS, batch_size=batch_size)
    assert got.shape == want.shape == (len(TEXTS), 384)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_rows_come_back_in_input_order(onnx_embedder):
    texts = ["short", "a much longer sentence about the weather in spring", "mid length"]
    together = onnx_embedder.embed(texts, batch_size=2)
    alone = np.vstack([onnx_embedder.embed([t]) for t in texts])
    assert np.abs(together - alone).max() < 1e-5
    assert onnx_embedder.embed([]).shape == (0, 384)


def test_the_export_is_reused_and_an_unreadable_one_rebuilt(onnx_embedder, cache_dir):
    model = onnx_embedder._model
    location = resolve_model_path(DEFAULT_MODEL)
    exported = cache_file(cache_dir, location, plan_export(model))
    assert [p.name for p in cache_dir.iterdir()] == [exported.name]  # no temp files left
    stamp = exported.stat().st_mtime_ns

    again = load_onnx_encoder(model, location, cache_dir, threads=1)
    assert again.path == exported
    assert exported.stat().st_mtime_ns == stamp  # read, not exported again

    exported.write_bytes(b"not an onnx graph")
    rebuilt = load_onnx_encoder(model, location, cache_dir, threads=1)
    assert exported.stat().st_size > 1_000_000
    features = model.preprocess(["a rebuilt graph answers"])
    vector = rebuilt.run({name: features[name].numpy() for name in rebuilt.plan.inputs})
    assert np.abs(vector - onnx_embedder.embed(["a rebuilt graph answers"])).max() < 1e-5


def test_changed_model_files_get_a_new_cache_entry(tmp_path, torch_embedder):
    import shutil

    copy = tmp_path / "minilm"
    shutil.copytree(resolve_model_path(DEFAULT_MODEL), copy)
    plan = plan_export(torch_embedder._model)
    before = cache_file(tmp_path / "cache", str(copy), plan)
    assert before == cache_file(tmp_path / "cache", str(copy), plan)
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    assert cache_file(tmp_path / "cache", str(copy), plan) != before


def test_a_model_with_a_dense_layer_stays_on_pytorch(model_128d, cache_dir):
    embedder = load_embedder(str(model_128d), "cpu", "auto", cache_dir)
    assert embedder.runtime == "torch"
    assert embedder.embed(["hello"]).shape == (1, 128)
    with pytest.raises(OnnxUnsupported, match="Dense"):
        plan_export(embedder._model)


def test_demanding_onnx_for_a_model_it_cannot_export_fails_with_the_reason(model_128d, cache_dir):
    with pytest.raises(ModelUnavailable, match=r"cannot run on ONNX: modules .*Dense"):
        load_embedder(str(model_128d), "cpu", "onnx", cache_dir)


def test_an_unwritable_cache_falls_back_to_pytorch_under_auto(tmp_path):
    # A regular file where the directory should be: no export can be written there
    # (root ignores permission bits, so a read-only directory would not do).
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    embedder = load_embedder(DEFAULT_MODEL, "cpu", "auto", blocked / "onnx")
    assert embedder.runtime == "torch"
    with pytest.raises(ModelUnavailable, match="export failed"):
        load_embedder(DEFAULT_MODEL, "cpu", "onnx", blocked / "onnx-too")


def test_the_service_setting_defaults_to_auto():
    from mxw_embedder.settings import EmbedderSettings

    settings = EmbedderSettings()
    assert settings.embedding_runtime == "auto"
    assert settings.onnx_cache_dir == Path.home() / ".cache" / "mxwhisper" / "onnx"
