"""ONNX Runtime inference for plain sentence-transformers models.

Why: on this CPU PyTorch spends ~15 ms on one short query with MiniLM, most of it per-op
dispatch overhead; the same graph in ONNX Runtime, with its fused BERT attention, answers
in a third of that and is no slower on bulk batches (docs/benchmarks.md, "Embedder").

What: the model's transformer plus its pooling and normalisation are exported once into one
graph (token ids in, sentence vectors out) and cached on disk, keyed by the weights and the
library versions. Tokenisation stays with sentence-transformers, so both runtimes read the
same tokens. Only models of the shape Transformer → Pooling(mean | cls) → [Normalize] are
exported; anything else (dense projections, other poolings) keeps PyTorch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import onnxruntime
    import torch
    from sentence_transformers import SentenceTransformer

# Part of the cache key: bump when the exported graph changes for the same weights.
EXPORT_FORMAT = 1

Pooling = Literal["mean", "cls"]


class OnnxUnsupported(RuntimeError):
    """This model cannot run on ONNX Runtime here; the message says why."""


@dataclass(frozen=True)
class ExportPlan:
    """What the exported graph computes: its inputs, the pooling and whether it normalises."""

    inputs: tuple[str, ...]
    pooling: Pooling
    normalize: bool


def plan_export(model: SentenceTransformer) -> ExportPlan:
    """The plan for `model`, or OnnxUnsupported naming what does not fit."""
    kinds = [type(module).__name__ for module in model]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise OnnxUnsupported(f"modules {kinds}: only Transformer → Pooling → [Normalize]")
    pooling_config: dict[str, Any] = _module(model, 1).get_config_dict()
    mode = pooling_config.get("pooling_mode")
    if mode not in ("mean", "cls"):
        raise OnnxUnsupported(f"pooling {mode!r}: only mean and cls are exported")
    tokenizer_inputs = tuple(model.tokenizer.model_input_names)
    inputs = tuple(
        name
        for name in ("input_ids", "attention_mask", "token_type_ids")
        if name in tokenizer_inputs
    )
    if inputs[:2] != ("input_ids", "attention_mask"):
        raise OnnxUnsupported(f"tokenizer inputs {tokenizer_inputs}: ids and mask needed")
    return ExportPlan(inputs=inputs, pooling=mode, normalize=kinds[-1] == "Normalize")


def _module(model: SentenceTransformer, index: int) -> Any:
    """A module of the pipeline, untyped: torch types module attributes as Tensor | Module."""
    return model[index]


def _transformer(model: SentenceTransformer) -> Any:
    """The Hugging Face model inside the Transformer module."""
    return _module(model, 0).auto_model


def cache_file(cache_dir: Path, model_dir: str, plan: ExportPlan) -> Path:
    """Where the export of this model's weights lives: a digest of every weight and config
    file, the plan and the versions that produced it, so a changed model or library never
    reads a stale graph."""
    import onnxruntime
    import torch

    digest = hashlib.sha256()
    digest.update(repr((EXPORT_FORMAT, plan, torch.__version__, onnxruntime.__version__)).encode())
    root = Path(model_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return cache_dir / f"{root.name}-{digest.hexdigest()[:16]}.onnx"


def _sentence_graph(model: SentenceTransformer, plan: ExportPlan) -> torch.nn.Module:
    import torch

    transformer = _transformer(model)

    class SentenceGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *features: torch.Tensor) -> torch.Tensor:
            named = dict(zip(plan.inputs, features, strict=True))
            tokens: torch.Tensor = self.transformer(**named).last_hidden_state
            if plan.pooling == "cls":
                pooled = tokens[:, 0]
            else:  # as sentence-transformers' Pooling: padding does not count
                mask = named["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if plan.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled

    return SentenceGraph().eval()


def export(model: SentenceTransformer, plan: ExportPlan, target: Path) -> None:
    """Write the graph to `target` atomically (replicas sharing a cache never read half a
    file). The classic attention is traced because ONNX Runtime fuses that pattern; the
    model's own attention setting is restored afterwards."""
    import torch

    transformer = _transformer(model)
    config = transformer.config
    previous = config._attn_implementation
    sample = model.preprocess(["a sample sentence", "and another, longer sample sentence"])
    args = tuple(sample[name] for name in plan.inputs)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "tokens"} for name in plan.inputs}
    axes["embedding"] = {0: "batch"}
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, raw_name = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(handle)
    raw = Path(raw_name)
    try:
        transformer.set_attn_implementation("eager")
        # The tracer warns about shape branches that are constant for an encoder (the
        # mask never needs padding); tests compare the graph with PyTorch on all shapes.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # dynamo=False: the TorchScript exporter yields the attention pattern that
            # ONNX Runtime's BERT optimizer fuses; the torch.export one does not (yet).
            torch.onnx.export(
                _sentence_graph(model, plan),
                args,
                str(raw),
                input_names=list(plan.inputs),
                output_names=["embedding"],
                dynamic_axes=axes,
                opset_version=18,
                dynamo=False,
            )
        _optimize(raw, config)
        raw.replace(target)
    finally:
        transformer.set_attn_implementation(previous)
        raw.unlink(missing_ok=True)


def _optimize(path: Path, config: Any) -> None:
    """Fuse attention, layer norm and GELU for BERT-family models, in place. Other
    architectures keep the plain graph, which ONNX Runtime still optimises at load."""
    if getattr(config, "model_type", None) != "bert":
        return
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # Symbolic shape inference cannot follow the traced mask arithmetic; what needs it
    # (skip layer norm) ONNX Runtime fuses at load time anyway.
    options.enable_shape_inference = False
    options.enable_skip_layer_norm = False
    optimized = optimize_model(
        str(path),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        optimization_options=options,
        opt_level=1,
    )
    optimized.save_model_to_file(str(path))


class OnnxSentenceEncoder:
    """An exported graph in an ONNX Runtime session: token features in, vectors out."""

    def __init__(self, path: Path, plan: ExportPlan, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads > 0:
            options.intra_op_num_threads = threads
        self.path = path
        self.plan = plan
        self._session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    def run(self, features: dict[str, Any]) -> npt.NDArray[np.float32]:
        feed = {name: np.asarray(features[name], dtype=np.int64) for name in self.plan.inputs}
        (vectors,) = self._session.run(["embedding"], feed)
        return np.asarray(vectors, dtype=np.float32)


def load_onnx_encoder(
    model: SentenceTransformer, model_dir: str, cache_dir: Path, threads: int
) -> OnnxSentenceEncoder:
    """The model on ONNX Runtime: the cached export when there is one, else a new export
    (seconds, once per model and library version). An unreadable cache file is replaced."""
    plan = plan_export(model)
    if not Path(model_dir).is_dir():
        raise OnnxUnsupported(f"{model_dir!r} is not a local model directory")
    target = cache_file(cache_dir, model_dir, plan)
    if target.exists():
        try:
            return OnnxSentenceEncoder(target, plan, threads)
        except Exception:  # a truncated or foreign file: export again
            target.unlink(missing_ok=True)
    try:
        export(model, plan, target)
    except Exception as exc:
        raise OnnxUnsupported(f"export failed: {exc}") from exc
    return OnnxSentenceEncoder(target, plan, threads)
