from typing import Literal

from mxw_shared.settings import AudioSourceSettings
from pydantic import Field


class DiarizerSettings(AudioSourceSettings):
    service_name: str = "diarizer"
    port: int = 8005
    # "auto": CUDA when torch sees a GPU, else cpu.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Where speaker clustering runs on CUDA ("auto": the GPU when RAPIDS is installed and the
    # GPU can, else the CPU). On the CPU it always runs on the CPU.
    clustering: Literal["auto", "cpu", "gpu"] = "auto"
    # Two clusters whose mean voices are closer than this (cosine) are one speaker. senko's
    # 0.875 split one real voice in two on telephone-quality prompts (its clusters at 0.87,
    # two different people at 0.71; services/diarizer/tests, 2026-12-03): 0.8 keeps both.
    merge_similarity: float = Field(default=0.8, gt=0, le=1)
    # Voice embeddings are computed for this many 1.5-s windows at a time, so the features of
    # a long recording are never all in memory (about 48 KB per window).
    embedding_batch_windows: int = Field(default=1024, ge=16)
    # Jobs diarized at once by this replica (one: a second one only shares the same cores).
    max_concurrent_jobs: int = 1
    shutdown_grace_s: float = 20.0
    # How often a running diarization reports progress, or else checks for cancellation.
    progress_interval_s: float = Field(default=1.0, gt=0)
    # Load the model at start-up so the first job does not wait for it.
    preload_model: bool = True
    # senko's warm-up at load (dummy voices through the model and UMAP + HDBSCAN): about
    # 190 s on two small cores before the service is ready, for a first job a few seconds
    # faster. Off unless asked for.
    warmup: bool = False
    # Threads of the torch and clustering steps; 0: every core the machine has (senko's
    # default). Set it to the container's CPU share, or one pod oversubscribes a large node.
    cpu_threads: int = Field(default=0, ge=0)
