from pathlib import Path

from mxw_shared.contracts import WHISPER_MODELS
from mxw_shared.settings import CommonSettings
from pydantic import Field, model_validator


class TranscriberSettings(CommonSettings):
    service_name: str = "transcriber"
    port: int = 8002
    # The model a job gets when its options name none.
    default_model: str = "base"
    # The only model names a job may ask for (events come from other systems too): names
    # resolved by mxw_transcriber.models, never a local directory or a hub id from a user.
    allowed_models: list[str] = Field(default_factory=lambda: list(WHISPER_MODELS))
    # "auto": CUDA when CTranslate2 sees a GPU, else cpu.
    device: str = "auto"
    # "auto": float16 on CUDA, int8 on CPU (the fastest type each supports well).
    compute_type: str = "auto"
    # 0 leaves CTranslate2's default (OMP_NUM_THREADS or 4).
    cpu_threads: int = 0
    beam_size: int = 5
    vad_filter: bool = False
    # > 0: faster-whisper's BatchedInferencePipeline with this batch size (always with VAD);
    # 0: the sequential model, which conditions each window on the text before it.
    batch_size: int = 0
    # Jobs transcribed at once by this replica (each on its own partition). One on CPU:
    # a second job only shares the same cores. More replicas scale out to the topic's
    # partition count.
    max_concurrent_jobs: int = 1
    # On shutdown, how long a running job may take to finish before it is abandoned; it is
    # not committed, so it is delivered again and resumes after its last persisted segment.
    shutdown_grace_s: float = 20.0
    # Models shipped in parts are joined here once, then reused by every process.
    model_cache_dir: Path = Path(".data/models")
    # Longest wait between two checks for cancellation while no segment arrives.
    progress_interval_s: float = 0.5
    # Where s3:// audio lives (s3://bucket/prefix, the gateway's MXW_BLOB_STORE_URL); endpoint
    # and credentials from the standard AWS_* environment. Unset: s3:// URIs are refused.
    blob_store_url: str | None = None
    # Limits for http(s):// and s3:// audio sources (the timeout covers the whole download).
    download_max_bytes: int = 2 * 1024**3
    download_timeout_s: float = 600.0
    # http(s):// audio goes through the URL ingest's guard (mxw_shared.netguard): private,
    # loopback, link-local, multicast and reserved targets are refused unless
    # download_allow_private, or the address lies in download_allowed_networks (CIDR list).
    download_allow_private: bool = False
    download_allowed_networks: list[str] = Field(default_factory=list)
    download_max_redirects: int = Field(default=5, ge=0)
    download_connect_timeout_s: float = Field(default=10.0, gt=0)
    download_resolve_timeout_s: float = Field(default=10.0, gt=0)
    # Check the audio's bytes against the event's sha256 before transcribing.
    verify_sha256: bool = True
    # Load the default model at start-up so the first job does not wait for it.
    preload_default_model: bool = True

    @model_validator(mode="after")
    def _default_model_is_allowed(self) -> "TranscriberSettings":
        if self.default_model not in self.allowed_models:
            raise ValueError(
                f"default_model {self.default_model!r} is not one of allowed_models "
                f"{self.allowed_models}"
            )
        return self
