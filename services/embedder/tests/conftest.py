"""The embedder running in-process against the session's real Postgres and broker, shared
by the API and pipeline tests (start-up loads the model: seconds)."""

import pytest
from asgi_lifespan import LifespanManager
from mxw_embedder.main import create_app
from mxw_embedder.settings import EmbedderSettings

SERVICE_TOKEN = "test-service-token-0123456789"


@pytest.fixture(scope="session")
def service_token() -> str:
    return SERVICE_TOKEN


@pytest.fixture(scope="session")
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
