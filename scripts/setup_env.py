"""Install the workspace (.venv) from uv.lock, with the torch build that fits this machine.

uv.lock names torch from PyPI only, so the lock is the same everywhere and reproducible. On
Linux x86-64 PyPI's torch is the CUDA build (~3 GB with its nvidia-* wheels); it runs on a
CPU too, but a machine without an NVIDIA GPU is better served by PyTorch's CPU build of the
same version (~0.2 GB). MXW_TORCH chooses:

  auto  (default) cuda where `nvidia-smi -L` lists a GPU; cpu on Linux x86-64 otherwise,
        falling back to PyPI's build when no CPU build can be had; pypi elsewhere (macOS and
        Linux aarch64: PyPI's torch is the CPU build there)
  cpu   PyTorch's CPU build of the locked version, or fail
  cuda  PyPI's build (the CUDA one on Linux x86-64)
  pypi  PyPI's build, exactly as locked

Where the CPU build comes from: local wheel folders the machine provides (MXW_TORCH_FIND_LINKS,
else UV_FIND_LINKS / PIP_FIND_LINKS; space- or comma-separated), then PyTorch's CPU index
(MXW_TORCH_CPU_INDEX, default https://download.pytorch.org/whl/cpu). It is the locked version
with the local tag `+cpu`; the rest of the environment is installed from the lock as always.

Arguments replace `--all-packages` in `uv sync` (the images: `--no-dev --no-editable
--package mxwhisper-embedder`); UV_PROJECT_ENVIRONMENT names the environment (.venv).
Runs under any python3 (no third-party modules): it is what creates the environment.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

DEFAULT_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
BUILDS = ("auto", "cpu", "cuda", "pypi")


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def choose_build(requested: str, system: str, machine: str, gpu: bool) -> str:
    """The torch build to install: cpu, cuda or pypi."""
    if requested not in BUILDS:
        raise SystemExit(f"MXW_TORCH={requested!r}: expected one of {', '.join(BUILDS)}")
    if requested != "auto":
        return requested
    if gpu:
        return "cuda"
    if system == "Linux" and machine in ("x86_64", "AMD64"):
        return "cpu"
    return "pypi"


def lock_packages(lock_text: str) -> dict[str, list[tuple[str, str]]]:
    """package name -> [(dependency name, marker)] from uv.lock (TOML written by uv)."""
    packages: dict[str, list[tuple[str, str]]] = {}
    for block in lock_text.split("\n[[package]]\n")[1:]:
        name = re.search(r'^name = "([^"]+)"', block, re.M)
        if name is None:
            continue
        deps: list[tuple[str, str]] = []
        section = re.search(r"^dependencies = \[\n(.*?)^\]", block, re.M | re.S)
        if section:
            for line in section.group(1).splitlines():
                dep = re.search(r'name = "([^"]+)"', line)
                marker = re.search(r'marker = "([^"]*)"', line)
                if dep:
                    deps.append((dep.group(1), marker.group(1) if marker else ""))
        extras_header = r"^\[package\.optional-dependencies\]\n(.*?)(?:^\[|\Z)"
        extras = re.search(extras_header, block, re.M | re.S)
        if extras:
            deps.extend((d, "") for d in re.findall(r'name = "([^"]+)"', extras.group(1)))
        packages[name.group(1)] = deps
    return packages


def _closure(
    packages: Mapping[str, list[tuple[str, str]]], roots: Iterable[str], stop: str = ""
) -> set[str]:
    """Everything `roots` need, not walking through `stop`."""
    seen: set[str] = set()
    todo = [r for r in roots if r != stop]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(dep for dep, _ in packages.get(name, []) if dep != stop)
    return seen


def cuda_only_packages(packages: Mapping[str, list[tuple[str, str]]]) -> set[str]:
    """torch's Linux-only dependencies (CUDA runtime, cuDNN, triton, ...) and what only they
    need: what the CPU build does without."""
    linux_only = {dep for dep, marker in packages["torch"] if "sys_platform == 'linux'" in marker}
    cuda = _closure(packages, linux_only)
    rest = [dep for dep, _ in packages["torch"] if dep not in linux_only]
    rest += [name for name in packages if name != "torch" and name not in cuda]
    return cuda - _closure(packages, rest, stop="torch")


def locked_torch_version(lock_text: str) -> str:
    found = re.search(r'\n\[\[package\]\]\nname = "torch"\nversion = "([^"]+)"', lock_text)
    if found is None:
        raise SystemExit("uv.lock names no torch")
    return found.group(1)


def wheel_folders(env: Mapping[str, str]) -> list[str]:
    raw = env.get("MXW_TORCH_FIND_LINKS") or env.get("UV_FIND_LINKS") or env.get("PIP_FIND_LINKS")
    return [f for f in re.split(r"[\s,]+", raw or "") if f]


def installed_torch(venv: Path) -> str | None:
    for dist in venv.glob("lib/python*/site-packages/torch-*.dist-info"):
        return dist.name.removeprefix("torch-").removesuffix(".dist-info")
    return None


def run(cmd: list[str], quiet: bool = False) -> int:
    """Exit status of `cmd`; quiet: its output only when nothing came of it is not news."""
    return subprocess.run(cmd, capture_output=quiet).returncode


def sync(uv: str, selection: list[str], exclude: Iterable[str] = ()) -> None:
    cmd = [uv, "sync", "--quiet", "--frozen", *selection]
    excluded = sorted(exclude)
    if excluded:
        # --inexact keeps the CPU torch installed beside the lock's packages.
        cmd.append("--inexact")
        for name in excluded:
            cmd += ["--no-install-package", name]
    if run(cmd) != 0:
        raise SystemExit("uv sync failed")


def install_cpu_torch(uv: str, venv: Path, version: str, env: Mapping[str, str]) -> bool:
    """The locked version's CPU build: from the local wheel folders first, then the index."""
    wanted = f"{version.split('+')[0]}+cpu"
    if installed_torch(venv) == wanted:
        return True
    install = [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python")]
    install += ["--no-deps", f"torch=={wanted}"]
    folders = [f for f in wheel_folders(env) if Path(f).is_dir()]
    if folders:
        local = [arg for folder in folders for arg in ("--find-links", folder)]
        if run([*install, "--no-index", *local], quiet=True) == 0:
            return True
    index = env.get("MXW_TORCH_CPU_INDEX", DEFAULT_CPU_INDEX)
    # uv's own account of a refused index only matters to someone who asked for the CPU build.
    return run([*install, "--index-url", index], quiet=env.get("MXW_TORCH", "auto") == "auto") == 0


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    os.chdir(root)
    uv = shutil.which("uv") or sys.exit("uv not found")
    env = os.environ
    requested = env.get("MXW_TORCH", "auto")
    build = choose_build(requested, platform.system(), platform.machine(), has_nvidia_gpu())
    lock_text = (root / "uv.lock").read_text()
    version = locked_torch_version(lock_text)
    # The images install one service into /opt/venv: `setup_env.py --no-dev --package X`.
    selection = sys.argv[1:] or ["--all-packages"]
    venv = Path(env.get("UV_PROJECT_ENVIRONMENT", root / ".venv"))
    # Remembers that this machine could not get the CPU build, so that every `./mxw up`
    # does not ask an unreachable index again (MXW_TORCH=cpu, or deleting it, asks again).
    no_cpu_build = venv / ".mxw-no-cpu-torch"
    known_unreachable = no_cpu_build.is_file() and no_cpu_build.read_text().startswith(
        f"torch {version}:"
    )
    if build == "cpu" and not (requested == "auto" and known_unreachable):
        cuda_only = cuda_only_packages(lock_packages(lock_text))
        sync(uv, selection, exclude=cuda_only | {"torch"})
        if install_cpu_torch(uv, venv, version, env):
            # A venv that held the CUDA build before keeps no orphaned CUDA wheels.
            site = next(venv.glob("lib/python*/site-packages"))
            leftovers = [
                p for p in sorted(cuda_only) if any(site.glob(f"{p.replace('-', '_')}-*.dist-info"))
            ]
            if leftovers:
                python = str(venv / "bin" / "python")
                run([uv, "pip", "uninstall", "--quiet", "--python", python, *leftovers])
            no_cpu_build.unlink(missing_ok=True)
            return
        if requested == "cpu":
            raise SystemExit(
                "MXW_TORCH=cpu: no CPU build of torch could be had from "
                f"{wheel_folders(env) or 'no local wheel folder'} or "
                f"{env.get('MXW_TORCH_CPU_INDEX', DEFAULT_CPU_INDEX)}"
            )
        print(
            "mxw setup: PyTorch's CPU build is not reachable here; installing PyPI's torch "
            "(the CUDA build, which also runs on the CPU). MXW_TORCH_CPU_INDEX or "
            "MXW_TORCH_FIND_LINKS point at a CPU build.",
            file=sys.stderr,
        )
        sync(uv, selection)
        no_cpu_build.write_text(f"torch {version}: CPU build not reachable\n")
        return
    sync(uv, selection)


if __name__ == "__main__":
    main()
