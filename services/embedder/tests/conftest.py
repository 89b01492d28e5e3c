"""The embedder running in-process against the session's real Postgres and broker, shared
by the tests of one module (the model itself is loaded once per process)."""

import pytest
from asgi_lifespan import LifespanManager
from mxw_embedder.main import create_app
from mxw_embedder.models import DEFAULT_MODEL, resolve_model_path
from mxw_embedder.settings import EmbedderSettings

SERVICE_TOKEN = "test-service-token-0123456789"


@pytest.fixture(scope="session")
def service_token() -> str:
    return SERVICE_TOKEN


# Per module, not per session: a session-long consumer in group "embedder" would share the
# group (and rebalance) with every later embedder in the suite (tests/observability).
@pytest.fixture(scope="module")
async def embedder_app(infra):
    settings = infra.settings(
        EmbedderSettings,
        "embedder",
        service_token=SERVICE_TOKEN,
        batch_size=4,  # several batches per job, so batching and progress are exercised
        max_batch_inputs=8,
        max_input_chars=500,
        device="cpu",
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=180, shutdown_timeout=60):
        yield app


@pytest.fixture(scope="session")
def model_128d(tmp_path_factory):
    """A 128-dimensional model built from the packaged MiniLM and a dense projection, saved
    like any sentence-transformers model (a dimension other than the column's, and a
    module layout the ONNX export does not take)."""
    from sentence_transformers import SentenceTransformer, models

    base = SentenceTransformer(resolve_model_path(DEFAULT_MODEL), device="cpu")
    dense = models.Dense(in_features=384, out_features=128)
    path = tmp_path_factory.mktemp("models") / "minilm-128d"
    SentenceTransformer(modules=[*base, dense], device="cpu").save(str(path))
    return path
