"""Model registry and the start-up dimension check, with real models on disk: the packaged
all-MiniLM-L6-v2, a copy of it at a local path, and a 128-dimensional model built from it
(MiniLM + a dense projection), saved like any sentence-transformers model."""

import shutil

import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from mxw_embedder.main import DimensionMismatch, create_app
from mxw_embedder.models import (
    DEFAULT_MODEL,
    ModelRegistry,
    RegisteredModel,
    load_embedder,
    registry,
    resolve_model_path,
)
from mxw_embedder.settings import EmbedderSettings


@pytest.fixture(scope="module")
def minilm_copy(tmp_path_factory):
    target = tmp_path_factory.mktemp("models") / "my-minilm"
    shutil.copytree(resolve_model_path(DEFAULT_MODEL), target)
    return target


def test_the_default_registry_knows_the_packaged_model():
    assert registry.names() == [DEFAULT_MODEL]
    assert registry.canonical_name("sentence-transformers/all-MiniLM-L6-v2") == DEFAULT_MODEL
    assert registry.resolve("/some/local/dir") == "/some/local/dir"


def test_a_registered_model_resolves_to_its_location():
    local = ModelRegistry()
    local.register(RegisteredModel("team-model", frozenset({"tm"}), lambda: "/models/team"))
    assert local.resolve("tm") == "/models/team"
    assert local.canonical_name(" tm ") == "team-model"
    assert local.names() == ["team-model"]


def test_any_sentence_transformers_directory_loads_by_path(minilm_copy):
    by_path = load_embedder(str(minilm_copy), "cpu")
    packaged = load_embedder(DEFAULT_MODEL, "cpu")
    assert by_path is not packaged
    assert by_path.name == str(minilm_copy)
    assert by_path.dimensions == 384
    text = ["the same model from another place"]
    assert np.allclose(by_path.embed(text), packaged.embed(text), atol=1e-5)


def test_the_dimension_comes_from_the_model(model_128d):
    embedder = load_embedder(str(model_128d), "cpu")
    assert embedder.dimensions == 128
    assert embedder.embed(["hello"]).shape == (1, 128)


async def test_start_up_refuses_a_model_whose_vectors_do_not_fit_the_column(infra, model_128d):
    settings = infra.settings(
        EmbedderSettings, "embedder-128d", model=str(model_128d), device="cpu"
    )
    app = create_app(settings)
    with pytest.raises(DimensionMismatch) as caught:
        async with LifespanManager(app, startup_timeout=120):
            pass
    message = str(caught.value)
    assert "gives 128-dimensional vectors" in message
    assert "chunk_embeddings.embedding is vector(384)" in message
