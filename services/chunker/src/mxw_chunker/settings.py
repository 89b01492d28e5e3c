from typing import Literal

from mxw_shared.settings import CommonSettings
from pydantic import SecretStr


class ChunkerSettings(CommonSettings):
    service_name: str = "chunker"
    port: int = 8003

    # Bounds of every method: a chunk is cut before it passes `max_s` or `max_chars`, and
    # chunks shorter than `min_s` are avoided (see docs/chunking.md).
    min_s: float = 15.0
    max_s: float = 90.0
    max_chars: int = 1500
    keywords_per_chunk: int = 5
    keyword_language: str = "en"

    # local: TextTiling over all-MiniLM-L6-v2 segment embeddings, loaded in this process.
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_device: str = "cpu"
    embedding_max_tokens: int = 128
    # contextual: a transformer pass per segment (best boundaries, ~25 ms CPU a segment on
    # this machine); static: mean of the model's word-piece vectors (~0.2 ms a segment).
    # auto: contextual up to `local_contextual_max_segments`, static beyond, so an hour of
    # speech stays within seconds.
    local_embedding: Literal["auto", "contextual", "static"] = "auto"
    local_contextual_max_segments: int = 200
    local_block: int = 6
    local_cutoff_std: float = 1.0
    local_min_depth: float = 0.1
    local_full_depth: float = 0.4

    # fixed: windows of about `fixed_window_s`; each chunk's text repeats the last
    # `fixed_overlap_s` seconds of the one before (timestamps never overlap).
    fixed_window_s: float = 60.0
    fixed_overlap_s: float = 10.0

    # llm: any OpenAI-compatible chat endpoint; unset URL = no LLM (auto → local).
    llm_url: str | None = None  # base URL, e.g. http://127.0.0.1:8080/v1
    llm_model: str = "default"
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = 60.0
    llm_retries: int = 1
    llm_response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    llm_window_chars: int = 12_000
    llm_window_overlap: int = 10
    llm_max_gap: int = 2
