"""docker-compose.yml, checked without a container engine: the Compose Specification schema
(vendored by check-jsonschema) and the file against the code: every service's environment
against its settings model, ports and health checks, start order, topics, auth wiring."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mxw_local.apache_kafka import kafka_version
from mxw_shared import kafka_access
from mxw_shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())  # merge keys resolved
    return data


def image_service(spec: dict[str, Any]) -> str | None:
    match = re.fullmatch(r"mxwhisper/(\w+):.*", spec.get("image", ""))
    return match.group(1) if match else None


def runs_service(spec: dict[str, Any]) -> bool:
    """True when the container runs the image's own service (not mxw-migrate or a script)."""
    return "command" not in spec and "entrypoint" not in spec


def mounts(spec: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(source, target, subpath) of every volume a service mounts, short or long syntax."""
    found = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, dict):
            subpath = volume.get("volume", {}).get("subpath")
            found.append((volume["source"], volume["target"], subpath))
        else:
            source, target = volume.split(":")[:2]
            found.append((source, target, None))
    return found


def env_value(value: str) -> str:
    """${VAR:-default} → default (what runs when nothing overrides it)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def test_compose_file_validates_against_the_compose_spec() -> None:
    result = check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  web:\n    image: x\n    depends_on: {db: {condition: up}}\n")
    result = check_compose_schema(broken)
    assert result.returncode != 0
    assert "condition" in result.stdout + result.stderr


def test_every_service_runs_on_real_infrastructure(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    specs = compose["services"]
    assert specs["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in specs["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert specs["postgres"]["image"].startswith("pgvector/pgvector:")
    assert {"otel-collector", "jaeger", "migrate", "kafka-secrets", "kafka-setup"} <= set(specs)
    default_profile = {
        image_service(s) for s in specs.values() if runs_service(s) and "profiles" not in s
    }
    assert set(services) <= default_profile
    profiles = {p for s in specs.values() for p in s.get("profiles", [])}
    assert {"gpu", "llm", "auth"} <= profiles


@pytest.mark.parametrize(
    "name", ["gateway", "notifier", "transcriber", "diarizer", "chunker", "embedder"]
)
def test_service_wiring_matches_its_code(
    name: str, compose: dict[str, Any], services: dict[str, Any], env_check: Any
) -> None:
    code = services[name]
    specs = [
        (key, s)
        for key, s in compose["services"].items()
        if image_service(s) == name and runs_service(s)
    ]
    assert specs, f"no compose service runs mxwhisper/{name}"
    for key, spec in specs:
        env = {k: env_value(str(v)) for k, v in spec["environment"].items()}
        assert env_check(set(env), code.settings_cls) == set(), key
        # The consumer group is the service name: a wrong one would split the stage.
        assert env.get("MXW_SERVICE_NAME", code.service_name) == code.service_name, key
        port = int(env.get("MXW_PORT", code.port))
        assert port == code.port, key
        assert f"127.0.0.1:{port}/readyz" in " ".join(spec["healthcheck"]["test"]), key
        for published in spec.get("ports", []):
            assert str(published).endswith(f":{port}"), published
        depends = spec["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", key
        assert depends["kafka-setup"]["condition"] == "service_completed_successfully", key
        # Its own SCRAM principal, its password from its own folder of the secrets volume.
        assert env["MXW_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", key
        assert env["MXW_KAFKA_USERNAME"] == kafka_access.SERVICES[name].name, key
        assert env["MXW_KAFKA_CREATE_TOPICS"] == "false", key
        secret_dir = str(Path(env["MXW_KAFKA_PASSWORD_FILE"]).parent)
        assert ("kafka-secrets", secret_dir, env["MXW_KAFKA_USERNAME"]) in mounts(spec), key
        assert spec.get("read_only") is True, key
        assert "/tmp" in spec.get("tmpfs", []), key  # noqa: S108 - the writable tmpfs
        assert env["MXW_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        grace = float(
            env.get(
                "MXW_SHUTDOWN_GRACE_S", code.settings_cls.model_fields["shutdown_grace_s"].default
            )
        )
        assert int(spec["stop_grace_period"].removesuffix("s")) > grace, key
        assert "postgres:5432" in env["MXW_DATABASE_URL"]


def test_references_resolve(compose: dict[str, Any]) -> None:
    specs = compose["services"]
    for name, spec in specs.items():
        for needed in spec.get("depends_on", {}):
            assert needed in specs, (name, needed)
            # A service in no profile must not wait for one that only runs in a profile.
            assert "profiles" in spec or "profiles" not in specs[needed], (name, needed)
        for source, _, _ in mounts(spec):
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
        build = spec.get("build")
        # Our images are built here, never pulled: each service on one says how to build it.
        assert build or not image_service(spec), name
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


def test_one_shot_services_use_only_common_settings(
    compose: dict[str, Any], env_check: Any
) -> None:
    one_shots = [
        s for s in compose["services"].values() if image_service(s) and not runs_service(s)
    ]
    assert one_shots
    for spec in one_shots:
        assert env_check(set(spec.get("environment", {})), CommonSettings) == set()
    assert compose["services"]["migrate"]["command"] == ["mxw-migrate"]


def test_blob_volume_is_shared_by_writer_and_reader(compose: dict[str, Any]) -> None:
    specs = compose["services"]

    def blob_mount(spec: dict[str, Any]) -> str:
        root = spec["environment"]["MXW_BLOB_ROOT"]
        (volume,) = [source for source, target, _ in mounts(spec) if target == root]
        return volume

    for reader in ("transcriber", "transcriber-gpu", "diarizer", "diarizer-gpu"):
        spec = specs[reader]
        assert blob_mount(spec) == blob_mount(specs["gateway"]), reader
        read_only = f"{blob_mount(spec)}:{spec['environment']['MXW_BLOB_ROOT']}:ro"
        assert read_only in spec["volumes"], f"{reader} reads the uploads read-only"


def test_kafka_setup_creates_topics_users_and_acls_as_the_code_declares(
    compose: dict[str, Any],
) -> None:
    specs = compose["services"]
    setup, secrets = specs["kafka-setup"], specs["kafka-secrets"]
    assert setup["command"][:4] == ["python", "-m", "mxw_shared.kafka_setup", "apply"]
    assert secrets["command"][:4] == ["python", "-m", "mxw_shared.kafka_setup", "secrets"]
    assert setup["command"][4] == secrets["command"][4]  # the same passwords
    assert not (COMPOSE_DIR / "create-topics.sh").exists()  # topics: ensure_topics alone
    # The services' settings and the set-up's agree on the topics' shape.
    common = compose["x-mxw-env"]
    for name in ("MXW_KAFKA_PARTITIONS", "MXW_KAFKA_REPLICATION_FACTOR"):
        assert setup["environment"][name] == common[name]
    assert setup["environment"]["MXW_KAFKA_USERNAME"] == kafka_access.ADMIN
    assert setup["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert specs["kafka"]["depends_on"]["kafka-secrets"]["condition"] == (
        "service_completed_successfully"
    )
    assert specs["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_the_broker_is_the_kafka_release_the_project_runs(compose: dict[str, Any]) -> None:
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{kafka_version()}"


def test_the_broker_takes_only_authenticated_clients(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}
    for listener in ("CLIENT", "HOST"):  # services, other systems: SCRAM users only
        assert env[f"KAFKA_LISTENER_NAME_{listener}_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_SUPER_USERS"] == f"User:{kafka_access.ADMIN}"


def test_each_container_mounts_only_its_own_kafka_password(compose: dict[str, Any]) -> None:
    whole_volume = set()
    for name, spec in compose["services"].items():
        for source, _, subpath in mounts(spec):
            if source != "kafka-secrets":
                continue
            if subpath is None:
                whole_volume.add(name)
                continue
            env = spec.get("environment", {})
            assert subpath == env.get("MXW_KAFKA_USERNAME", kafka_access.ADMIN), name
            assert name != "kafka" or subpath == kafka_access.ADMIN
    # Only the one-shots that write the passwords and create the users see all of them.
    assert whole_volume == {"kafka-secrets", "kafka-setup"}
    assert all(not runs_service(compose["services"][n]) for n in whole_volume)


def test_gpu_profile_runs_the_cuda_image_on_the_nvidia_runtime(compose: dict[str, Any]) -> None:
    specs = compose["services"]
    assert specs["transcriber-gpu"]["build"]["dockerfile"] == "services/transcriber/Dockerfile.cuda"
    # The diarizer's CUDA image: its Dockerfile target with PyPI's (CUDA) torch.
    assert specs["diarizer-gpu"]["build"]["target"] == "diarizer"
    assert specs["diarizer-gpu"]["build"]["args"]["TORCH"] == "cuda"
    for name, cpu_name in (("transcriber-gpu", "transcriber"), ("diarizer-gpu", "diarizer")):
        gpu = specs[name]
        assert gpu["profiles"] == ["gpu"], name
        assert gpu["image"].endswith("-cuda"), name
        (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert "gpu" in device["capabilities"]
        assert gpu["environment"]["MXW_DEVICE"] == "cuda"
        # The same consumer group and principal as the CPU service it replaces.
        for key in ("MXW_SERVICE_NAME", "MXW_KAFKA_USERNAME"):
            assert gpu["environment"][key] == specs[cpu_name]["environment"][key], (name, key)


def env_file(name: str) -> dict[str, str]:
    lines = (COMPOSE_DIR / name).read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


def test_env_files_set_only_known_settings(known_settings_env: frozenset[str]) -> None:
    for path in sorted(COMPOSE_DIR.glob("*.env")):
        names = set(env_file(path.name))
        # s3.env also sets the AWS environment obstore reads.
        assert {n for n in names if not n.startswith("AWS_")} <= known_settings_env, path.name


def test_s3_settings_reach_the_writer_and_the_reader(compose: dict[str, Any]) -> None:
    s3_names = set(env_file("s3.env"))
    assert "MXW_BLOB_STORE_URL" in s3_names
    for name in ("gateway", "transcriber", "transcriber-gpu", "diarizer", "diarizer-gpu"):
        env = compose["services"][name]["environment"]
        # Valueless: passed through when set, absent otherwise (an empty string would be an
        # invalid s3:// URL, or a list setting that does not parse).
        assert {n: env.get(n, "missing") for n in s3_names} == dict.fromkeys(s3_names), name


def test_keycloak_realm_issues_tokens_the_services_accept(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    realm = json.loads((COMPOSE_DIR / "keycloak" / "mxwhisper-realm.json").read_text())
    keycloak_env = env_file("keycloak.env")
    hostname = compose["services"]["keycloak"]["environment"]["KC_HOSTNAME"]
    issuer = f"{hostname}/realms/{realm['realm']}"
    assert keycloak_env["MXW_AUTH_ISSUER"] == issuer
    assert keycloak_env["MXW_WEB_OIDC_ISSUER"] == issuer
    assert keycloak_env["MXW_AUTH_JWKS_URL"].endswith(
        f"/realms/{realm['realm']}/protocol/openid-connect/certs"
    )
    common = services["gateway"].settings_cls.model_fields
    clients = {c["clientId"]: c for c in realm["clients"]}
    assert keycloak_env["MXW_WEB_OIDC_CLIENT_ID"] in clients
    for client in clients.values():
        mappers = {m["protocolMapper"]: m["config"] for m in client["protocolMappers"]}
        audience = mappers["oidc-audience-mapper"]["included.custom.audience"]
        assert audience == keycloak_env["MXW_AUTH_AUDIENCE"] == common["auth_audience"].default
        groups = mappers["oidc-group-membership-mapper"]
        assert groups["claim.name"] == common["auth_admin_claim"].default
        assert groups["full.path"] == "false"  # "admin", not "/admin"
    admins = [
        u for u in realm["users"] if "/" + common["auth_admin_value"].default in u.get("groups", [])
    ]
    assert admins


def env_value_in(text: str) -> str:
    """Every ${VAR:-default} in `text` replaced by its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def test_c1_compose_publishes_ports_on_loopback_by_default(compose: dict[str, Any]) -> None:
    published = 0
    for name, spec in compose["services"].items():
        for port in spec.get("ports", []):
            # "<host address>:<host port>:<container port>", the address maybe interpolated.
            address, _, _ = env_value_in(str(port)).rpartition(":")[0].rpartition(":")
            assert address == "127.0.0.1", (name, port)  # never every interface
            published += 1
    assert published >= 3


def test_c1_compose_never_enables_dev_sign_in(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        assert "MXW_DEV_SIGN_IN" not in spec.get("environment", {}), name
    for path in COMPOSE_DIR.glob("*.env"):
        assert "MXW_DEV_SIGN_IN" not in env_file(path.name), path.name


def test_c1_only_the_token_minters_mount_the_signing_key(compose: dict[str, Any]) -> None:
    specs = compose["services"]
    command = " ".join(specs["dev-issuer"]["command"])
    (key_dir,) = re.findall(r"DevIssuer\.ensure\(Path\('([^']+)'\)\)", command)
    key_volumes = {source for source, target, _ in mounts(specs["dev-issuer"]) if target == key_dir}
    assert key_volumes == {"devauth"}
    mounting = {
        name
        for name, spec in specs.items()
        for source, _, _ in mounts(spec)
        if source in key_volumes
    }
    # One-shots only: the long-running services (the gateway above all) never hold the key.
    assert mounting == {"dev-issuer", "token"}
    assert all(not runs_service(specs[name]) for name in mounting)
    # The services verify with the public JWKS, which they do get.
    jwks_url = env_value(specs["gateway"]["environment"]["MXW_AUTH_JWKS_URL"])
    jwks_dir = str(Path(jwks_url.removeprefix("file://")).parent)
    for name in ("gateway", "notifier", "embedder"):
        sources = {target: source for source, target, _ in mounts(specs[name])}
        assert sources[jwks_dir] not in key_volumes, name
    assert env_value(specs["gateway"]["environment"]["MXW_DEV_JWKS_PATH"]).startswith(jwks_dir)
