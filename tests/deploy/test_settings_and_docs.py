"""Guards across the whole deployment: every MXW_* name the compose file, its env files and
the Kubernetes manifests mention is a field of some settings model (pydantic-settings ignores
unknown variables, so a misspelt or removed setting would silently do nothing), and the README
leads to every document a user or operator needs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S = ROOT / "deploy" / "k8s"
MXW_NAME = re.compile(r"\bMXW_[A-Z0-9_]+\b")
# MXW_* names compose interpolates that are not settings: the image tag, the address the
# public ports are published on, the outside systems the Kafka set-up makes principals for.
COMPOSE_ONLY = frozenset({"MXW_VERSION", "MXW_BIND", "MXW_KAFKA_OUTSIDE_SYSTEMS"})
# What README must link, each with a line saying what it is.
USER_DOCS = (
    "web.md",
    "deploy.md",
    "reliability.md",
    "operations.md",
    "notifier.md",
    "search.md",
    "api.md",
    "chunking.md",
    "benchmarks.md",
    "architecture.md",
)


def mxw_names(value: Any) -> set[str]:
    """Every MXW_* name in a parsed YAML document: keys, values and interpolations."""
    if isinstance(value, dict):
        return set().union(*(mxw_names(k) | mxw_names(v) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(mxw_names(v) for v in value))
    return set(MXW_NAME.findall(value)) if isinstance(value, str) else set()


def misspelt(names: set[str], known: frozenset[str]) -> set[str]:
    return names - known - COMPOSE_ONLY


def test_the_guard_knows_every_settings_model(known_settings_env: frozenset[str]) -> None:
    # Common, per-service and mixed-in models (the webhook secret key settings) all count.
    expected = {"MXW_DATABASE_URL", "MXW_BLOB_STORE_URL", "MXW_WEB_OIDC_ISSUER"}
    expected |= {"MXW_SEND_BUFFER_BYTES", "MXW_WEBHOOK_SECRET_ROTATION_GRACE_S"}
    expected |= {"MXW_WEBHOOK_SECRET_KEY", "MXW_WEBHOOK_ALLOWED_NETWORKS"}
    assert expected <= known_settings_env
    assert misspelt({"MXW_SHUTDOWN_GRACE", "MXW_WEB_OIDC_ISSUER"}, known_settings_env) == {
        "MXW_SHUTDOWN_GRACE"
    }
    assert mxw_names({"env": [{"name": "MXW_A"}, "${MXW_B:-x} MXW_C"]}) == {
        "MXW_A",
        "MXW_B",
        "MXW_C",
    }


def test_compose_sets_only_defined_settings(known_settings_env: frozenset[str]) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    names = mxw_names(compose)
    assert {"MXW_BLOB_STORE_URL", "MXW_WEB_NOTIFIER_URL", "MXW_SHUTDOWN_GRACE_S"} <= names
    assert misspelt(names, known_settings_env) == set()
    # Comments name settings too (operators read them): the raw text, not only the YAML.
    assert misspelt(set(MXW_NAME.findall(COMPOSE_FILE.read_text())), known_settings_env) == set()


def test_compose_env_files_set_only_defined_settings(known_settings_env: frozenset[str]) -> None:
    env_files = sorted(COMPOSE_DIR.glob("*.env"))
    assert {p.name for p in env_files} >= {"keycloak.env", "llm.env", "s3.env"}
    compose_text = COMPOSE_FILE.read_text()
    compose = yaml.safe_load(compose_text)
    for path in env_files:
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
        names = {ln.split("=", 1)[0] for ln in lines}
        assert misspelt({n for n in names if n.startswith("MXW_")}, known_settings_env) == set()
        for name in names:
            # --env-file only feeds interpolation and valueless `environment` entries: a name
            # compose never mentions would reach no container.
            assert name in compose_text, (path.name, name)
        assert names <= mxw_names(compose) | {
            n
            for spec in compose["services"].values()
            for n, v in (spec.get("environment") or {}).items()
            if v is None
        }, path.name


def test_kubernetes_manifests_set_only_defined_settings(
    known_settings_env: frozenset[str], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    files = sorted(K8S.rglob("*.yaml"))
    # Every file, rendered into an overlay or not (a component, a patch), comments included.
    raw = set().union(*(MXW_NAME.findall(p.read_text()) for p in files))
    assert misspelt(raw, known_settings_env) == set()
    for overlay, docs in rendered.items():
        names = mxw_names(docs)
        assert "MXW_DATABASE_URL" in names, overlay
        assert misspelt(names, known_settings_env) == set(), overlay


def markdown_links(path: Path) -> dict[str, str]:
    """Relative link target (without its #fragment) → the line it is on."""
    links: dict[str, str] = {}
    for line in path.read_text().splitlines():
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if not re.match(r"[a-z]+:", target):
                links.setdefault(target.split("#")[0], line)
    return links


def test_readme_links_every_document_people_need() -> None:
    links = markdown_links(ROOT / "README.md")
    for name in USER_DOCS:
        target = f"docs/{name}"
        assert (ROOT / target).is_file(), target
        assert target in links, f"README does not link {target}"
        # A list entry with a description: "- [docs/x.md](docs/x.md) — what it is."
        entries = [
            ln
            for ln in (ROOT / "README.md").read_text().splitlines()
            if ln.startswith("- ") and f"]({target})" in ln
        ]
        assert entries, f"README has no list entry for {target}"
        assert any(len(ln.split("—", 1)[-1].split()) >= 4 for ln in entries if "—" in ln), target
    # Every document in docs/ is reachable from the README, and every link resolves.
    for doc in (ROOT / "docs").glob("*.md"):
        assert f"docs/{doc.name}" in links, f"README does not link docs/{doc.name}"
    for target in links:
        assert (ROOT / target).exists(), f"README links a missing {target}"


def test_readme_link_check_fails_on_a_missing_link(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    page.write_text("See [ops](docs/operations.md#alerts) and [x](https://example.com).\n")
    assert set(markdown_links(page)) == {"docs/operations.md"}
    assert "docs/web.md" not in markdown_links(page)
