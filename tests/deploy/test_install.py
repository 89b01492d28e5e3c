"""The install holds on any machine: the lock and project files name nothing that only one
machine has, and the set-up (scripts/setup_env.py) picks the torch build that fits."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _setup_env() -> ModuleType:
    spec = importlib.util.spec_from_file_location("setup_env", ROOT / "scripts" / "setup_env.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup_env = _setup_env()


def _machine_local(value: str) -> bool:
    """An absolute path, a home-relative path or a file URL: exists on one machine only."""
    return value.startswith(("/", "~", "file:")) or (len(value) > 1 and value[1] == ":")


def local_paths_in_lock(lock: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for package in lock.get("package", []):
        name = package["name"]
        for kind, where in package.get("source", {}).items():
            if kind == "registry" and not where.startswith("https://"):
                found.append(f"{name}: registry {where}")
            elif kind in ("path", "directory", "editable", "virtual") and _machine_local(where):
                found.append(f"{name}: {kind} {where}")
        for dist in [package.get("sdist", {}), *package.get("wheels", [])]:
            if "path" in dist and _machine_local(dist["path"]):
                found.append(f"{name}: file {dist['path']}")
            if "url" in dist and not dist["url"].startswith("https://"):
                found.append(f"{name}: url {dist['url']}")
    return found


def local_paths_in_project(project: dict[str, Any]) -> list[str]:
    uv = project.get("tool", {}).get("uv", {})
    found = [f"find-links {f}" for f in uv.get("find-links", []) if _machine_local(f)]
    found += [
        f"index {i.get('url', '')}" for i in uv.get("index", []) if _machine_local(i.get("url", ""))
    ]
    for name, source in uv.get("sources", {}).items():
        for entry in source if isinstance(source, list) else [source]:
            if _machine_local(str(entry.get("path", ""))):
                found.append(f"source {name}: {entry['path']}")
    return found


def test_uv_lock_names_no_machine_local_path() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    assert local_paths_in_lock(lock) == []


def test_project_files_name_no_machine_local_path() -> None:
    projects = [ROOT / "pyproject.toml", *ROOT.glob("*/pyproject.toml")]
    projects += [*ROOT.glob("services/*/pyproject.toml"), *ROOT.glob("deploy/*/pyproject.toml")]
    assert len(projects) >= 8
    for path in projects:
        assert local_paths_in_project(tomllib.loads(path.read_text())) == [], path


def test_the_checks_see_a_find_links_lock_as_it_was_before() -> None:
    # The lock of 140a421: torch's CPU build from a folder of our machines.
    lock = {
        "package": [
            {
                "name": "torch",
                "source": {"registry": "/opt/wheels"},
                "wheels": [{"path": "/opt/wheels/torch-2.13.0+cpu-cp311-linux_x86_64.whl"}],
            },
            {"name": "mxwhisper-shared", "source": {"editable": "shared"}},
        ]
    }
    assert len(local_paths_in_lock(lock)) == 2
    assert local_paths_in_project({"tool": {"uv": {"find-links": ["/opt/wheels"]}}})


@pytest.mark.parametrize(
    ("requested", "system", "machine", "gpu", "build"),
    [
        ("auto", "Linux", "x86_64", False, "cpu"),
        ("auto", "Linux", "x86_64", True, "cuda"),
        ("auto", "Darwin", "arm64", False, "pypi"),
        ("auto", "Linux", "aarch64", False, "pypi"),
        ("cpu", "Linux", "x86_64", True, "cpu"),
        ("pypi", "Linux", "x86_64", False, "pypi"),
    ],
)
def test_torch_build_follows_the_machine(
    requested: str, system: str, machine: str, gpu: bool, build: str
) -> None:
    assert setup_env.choose_build(requested, system, machine, gpu) == build


def test_unknown_torch_build_is_refused() -> None:
    with pytest.raises(SystemExit, match="MXW_TORCH"):
        setup_env.choose_build("rocm", "Linux", "x86_64", False)


def test_cpu_build_leaves_out_exactly_the_cuda_wheels() -> None:
    packages = setup_env.lock_packages((ROOT / "uv.lock").read_text())
    left_out = setup_env.cuda_only_packages(packages)
    assert "triton" in left_out
    assert any(name.startswith("nvidia-cudnn") for name in left_out)
    # torch's own CPU dependencies, and anything else the project needs, stay.
    assert not left_out & {"torch", "sympy", "networkx", "filelock", "numpy", "ctranslate2"}
    assert all(name.startswith(("nvidia-", "cuda-")) or name == "triton" for name in left_out)


def test_cpu_wheel_folders_come_from_settings_not_from_our_machines() -> None:
    assert setup_env.wheel_folders({}) == []
    assert setup_env.wheel_folders({"PIP_FIND_LINKS": "/a /b"}) == ["/a", "/b"]
    assert setup_env.wheel_folders({"MXW_TORCH_FIND_LINKS": "/c,/d", "PIP_FIND_LINKS": "/a"}) == [
        "/c",
        "/d",
    ]
