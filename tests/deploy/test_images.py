"""Container images, checked without a container engine: hadolint on every Dockerfile, and
each image against its service's code (port, entry point, settings, health path)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = sorted((ROOT / "services").glob("*/Dockerfile*"))


def hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_hadolint_is_clean_on_every_dockerfile() -> None:
    assert len(DOCKERFILES) >= 6, DOCKERFILES  # five services and the CUDA transcriber
    result = hadolint(*DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    # The gate above is only worth something if the linter really runs and fails.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3008" in result.stdout  # unpinned apt package


def test_every_service_has_an_image(services: dict[str, Any]) -> None:
    for name in services:
        assert (ROOT / "services" / name / "Dockerfile").is_file(), name
    assert (ROOT / "services" / "transcriber" / "Dockerfile.cuda").is_file()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_image_matches_its_service(
    dockerfile: Path, services: dict[str, Any], env_check: Any
) -> None:
    code = services[dockerfile.parent.name]
    steps = instructions(dockerfile)
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: build stage and a runtime stage without build tools"
    for image in froms:
        ref = image.split()[0]
        if ref == "scratch" or ref in {a.split()[-1] for a in froms if " AS " in a.upper()}:
            continue
        tag = ref.rsplit(":", 1)[-1] if ":" in ref.rsplit("/", 1)[-1] else ""
        assert re.search(r"\d", tag), f"unpinned base image {ref}"
        assert tag != "latest", ref

    stage = final_stage(dockerfile)
    words = dict(stage)
    env = env_of(stage)
    user = words.get("USER", "")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"numeric USER (runAsNonRoot can check it): {user!r}"
    assert int(uid) > 0, user
    assert env.get("MXW_PORT") == str(code.port)
    assert env.get("MXW_HOST") == "0.0.0.0"
    assert words.get("EXPOSE") == str(code.port)
    assert json.loads(words["CMD"]) == [code.script]
    healthcheck = words.get("HEALTHCHECK", "")
    assert "/livez" in healthcheck
    assert "MXW_PORT" in healthcheck
    assert env_check(set(env), code.settings_cls) == set()
    # Nothing in the runtime stage writes outside /tmp and volumes (read-only root fs).
    assert env.get("HOME") == "/tmp"  # noqa: S108 - the one writable path (a tmpfs)
    assert not [args for word, args in stage if word == "RUN"], "runtime stage runs nothing"
