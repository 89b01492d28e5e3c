from pathlib import Path
from typing import Literal

from mxw_shared.contracts import WHISPER_MODELS, Decoding
from mxw_shared.settings import AudioSourceSettings
from pydantic import Field, model_validator


class TranscriberSettings(AudioSourceSettings):
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
    beam_size: int = Field(default=5, ge=1, le=10)
    # How Whisper runs over the audio when a job does not say (JobOptions.decoding):
    # "batched" (faster-whisper's BatchedInferencePipeline: pauses found by its VAD split the
    # audio into pieces decoded batch_size at a time, with no text context), "sequential"
    # (30-s windows one after another, each conditioned on the text before), or "auto":
    # batched for the "model:language" pairs of batched_for ("model:*": every language),
    # sequential elsewhere. The default pairs are where batched measured no worse than
    # sequential on real speech (word error rate within half a point over 190-217 prompts
    # per language; docs/benchmarks.md, "Decoding modes"), where it is 1.4-2.4x faster;
    # base in Spanish lost 0.6 points batched, and languages not measured stay sequential.
    decoding: Decoding | Literal["auto"] = "auto"
    batched_for: list[str] = Field(
        default_factory=lambda: ["tiny.en:en", "base:en", "base:fr", "base:it", "base:ru"]
    )
    # Sequential mode only: skip silence with the VAD first (batched always does).
    vad_filter: bool = False
    batch_size: int = Field(default=8, ge=1, le=64)
    # Audio is decoded and transcribed this many seconds at a time: memory stays flat
    # whatever the length (about 64 kB per second held), and cuts fall in pauses.
    window_s: float = Field(default=600.0, ge=60.0)
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
