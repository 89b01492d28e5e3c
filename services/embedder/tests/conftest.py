"""The embedder running in-process against the session's real Postgres and broker, shared
by the tests of one module (the model itself is loaded once per process)."""

import pytest
from asgi_lifespan import LifespanManager
from mxw_embedder.main import create_app
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
