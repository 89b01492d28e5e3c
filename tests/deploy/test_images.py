"""Container images, checked without a container engine: hadolint on the one Dockerfile of
the services (and the CUDA transcriber's), each service's target in it against the service's
code (port, entry point, settings, health path), and each compose build against both."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILE = ROOT / "Dockerfile"  # every service's CPU image: one target per service
CUDA_DOCKERFILE = ROOT / "services" / "transcriber" / "Dockerfile.cuda"
SERVICE_NAMES = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))

Steps = list[tuple[str, str]]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def instructions(text: str) -> Steps:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(steps: Steps) -> dict[str, tuple[str, Steps]]:
    """Stage name -> (what it is FROM, its steps after FROM); unnamed stages by index."""
    found: dict[str, tuple[str, Steps]] = {}
    current: Steps = []
    for word, args in steps:
        if word == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(found))
            current = []
            found[name] = (parts[0], current)
        elif found:
            current.append((word, args))
    return found


def image_of(steps: Steps, target: str) -> Steps:
    """The steps that make the image of one target: its stage after those of the stages it
    is FROM, back to the base image (what `docker build --target` leaves in the image)."""
    by_name = stages(steps)
    chain: Steps = []
    name = target
    while name in by_name:
        parent, own = by_name[name]
        chain = own + chain
        name = parent
    return [("FROM", name), *chain]


def final_stage(steps: Steps) -> str:
    return list(stages(steps))[-1]


def env_of(stage: Steps) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def check_image(steps: Steps, target: str, code: Any, env_check: Any) -> None:
    """Assert what the image of `target` must be for the service `code` describes."""
    by_name = stages(steps)
    assert target in by_name, f"no stage {target!r} in {list(by_name)}"
    for base, _ in by_name.values():
        if base == "scratch" or base in by_name:
            continue
        tag = base.rsplit(":", 1)[-1] if ":" in base.rsplit("/", 1)[-1] else ""
        assert re.search(r"\d", tag), f"unpinned base image {base}"
        assert tag != "latest", base
    image = image_of(steps, target)
    assert image[0][1] not in by_name, "the chain ends at a base image"
    copied = {a.split()[0].removeprefix("--from=") for w, a in image if w == "COPY"}
    assert copied & set(by_name), "multi-stage: the runtime copies from a build stage"
    # A stage that imports another service's package (a model-baking step) is copied only
    # into that service's image: its build stage installed exactly that package.
    for word, args in image:
        if word == "COPY" and args.startswith("--from="):
            source = args.split()[0].removeprefix("--from=")
            for _, run in image_of(steps, source) if source in by_name else []:
                imported = set(re.findall(r"\bmxw_([a-z]+)\b", run)) - {"shared"}
                assert imported <= {code.name}, (target, source, imported)
    words = dict(image)
    env = env_of(image)
    user = words.get("USER", "")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"numeric USER (runAsNonRoot can check it): {user!r}"
    assert int(uid) > 0, user
    assert env.get("MXW_PORT") == str(code.port)
    assert env.get("MXW_HOST") == "0.0.0.0"
    assert words.get("EXPOSE") == str(code.port)
    assert json.loads(words["CMD"]) == [code.script]
    healthcheck = words.get("HEALTHCHECK", "")
    assert healthcheck.split()[-1:] != ["NONE"], healthcheck
    assert re.search(r"CMD \[", healthcheck), f"exec-form HEALTHCHECK: {healthcheck!r}"
    assert "/livez" in healthcheck
    assert "MXW_PORT" in healthcheck
    assert env_check(set(env), code.settings_cls) == set()
    # Nothing in the runtime stage writes outside /tmp and volumes (read-only root fs).
    assert env.get("HOME") == "/tmp"  # noqa: S108 - the one writable path (a tmpfs)
    assert not [args for word, args in image if word == "RUN"], "runtime stage runs nothing"


def lock_closure(package: str) -> set[str]:
    """Every package uv.lock installs with `package` (markers ignored: a superset)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    deps = {p["name"]: [d["name"] for d in p.get("dependencies", [])] for p in lock["package"]}
    seen: set[str] = set()
    todo = [package]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(deps.get(name, []))
    return seen


def test_hadolint_is_clean_on_the_dockerfiles() -> None:
    result = hadolint(DOCKERFILE, CUDA_DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    # The gate above is only worth something if the linter really runs and fails.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3008" in result.stdout  # unpinned apt package


def test_one_dockerfile_builds_every_service(services: dict[str, Any]) -> None:
    assert sorted(services) == SERVICE_NAMES
    # The per-service copies this Dockerfile replaced stay gone (only the CUDA one is apart).
    assert sorted((ROOT / "services").glob("*/Dockerfile*")) == [CUDA_DOCKERFILE]
    by_name = stages(instructions(DOCKERFILE.read_text()))
    assert set(services) <= set(by_name)
    build = instructions(DOCKERFILE.read_text())
    assert ("ARG", "SERVICE") in build, "SERVICE without a default: a build must name it"
    assert any(w == "RUN" and '--package "mxwhisper-$SERVICE"' in a for w, a in build)


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_image_matches_its_service(name: str, services: dict[str, Any], env_check: Any) -> None:
    check_image(instructions(DOCKERFILE.read_text()), name, services[name], env_check)


def test_cuda_image_matches_the_transcriber(services: dict[str, Any], env_check: Any) -> None:
    steps = instructions(CUDA_DOCKERFILE.read_text())
    check_image(steps, final_stage(steps), services["transcriber"], env_check)


def test_image_check_fails_on_a_wrong_port(services: dict[str, Any], env_check: Any) -> None:
    # The checks above are only worth something if they can fail: another port in the
    # gateway's stage, and a service's stage copying the transcriber's baked models.
    text = DOCKERFILE.read_text()
    wrong_port = text.replace("MXW_PORT=8000", "MXW_PORT=8009")
    assert wrong_port != text
    with pytest.raises(AssertionError):
        check_image(instructions(wrong_port), "gateway", services["gateway"], env_check)
    wrong_models = text.replace(
        "FROM runtime AS notifier\n",
        "FROM runtime AS notifier\nCOPY --from=transcriber-models /opt/models /opt/models\n",
    )
    assert wrong_models != text
    with pytest.raises(AssertionError, match="transcriber-models"):
        check_image(instructions(wrong_models), "notifier", services["notifier"], env_check)


def test_every_compose_build_names_its_service(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    targets = set(stages(instructions(DOCKERFILE.read_text())))
    built: set[str] = set()
    for name, spec in compose["services"].items():
        build = spec.get("build")
        if build is None:
            continue
        assert build["context"] == ".", name
        if build["dockerfile"] == CUDA_DOCKERFILE.relative_to(ROOT).as_posix():
            continue
        assert build["dockerfile"] == "Dockerfile", name
        args = build.get("args", {})
        service = args.get("SERVICE")
        assert service in services, f"{name}: SERVICE={service!r} is no services/<name>"
        pyproject = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
        assert pyproject["project"]["name"] == f"mxwhisper-{service}"
        assert build.get("target") == service, f"{name}: target and SERVICE differ"
        assert service in targets
        assert spec["image"].split(":")[0] == f"mxwhisper/{service}", name
        needs_torch = "torch" in lock_closure(f"mxwhisper-{service}")
        torch = args.get("TORCH", "none")
        # cpu: PyTorch's CPU build; cuda: PyPI's (CUDA) build, only for an image tagged -cuda.
        assert (torch in {"cpu", "cuda"}) == needs_torch, f"{name}: TORCH"
        assert (torch == "cuda") == spec["image"].endswith("-cuda"), f"{name}: TORCH"
        assert set(args) <= {"SERVICE", "TORCH"}, name
        built.add(service)
    assert built == set(services), "every service's image is built by compose"
