"""docker-compose.yml's Kafka security, run without a container engine: the broker settings
of service `kafka` (its KAFKA_* environment turned into properties the way the apache/kafka
image does), started through deploy/compose/kafka-run.sh on the same Kafka jars, with the
passwords and the set-up that the `kafka-secrets` and `kafka-setup` one-shots run. Only what
names docker's network is replaced: host names, ports, the data directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from mxw_local.apache_kafka import ensure_jars, unavailable_reason
from mxw_local.infra import free_port, wait_for_port
from mxw_shared import kafka_setup, topics
from mxw_shared.kafka import KafkaAccessError, check_access, client_options
from mxw_shared.settings import CommonSettings
from pydantic import SecretStr

pytestmark = [
    pytest.mark.infra,  # Apache Kafka of its own
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
KAFKA = COMPOSE["services"]["kafka"]
NOT_CONFIG = {"CLUSTER_ID", "KAFKA_OPTS"}


def property_name(variable: str) -> str:
    """The apache/kafka image's rule: KAFKA_ dropped, `_` → `.`, `__` → `_`, `___` → `-`."""
    name = variable.removeprefix("KAFKA_")
    name = re.sub(r"(?<!_)_(?!_)", ".", name).replace("___", "-").replace("__", "_")
    return name.lower()


def compose_value(value: str) -> str:
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)  # ${VAR:-default} → default


def one_shot(service: str, secrets: Path, env: dict[str, str]) -> str:
    """Run a compose one-shot's `python -m mxw_shared.kafka_setup …` command here, its
    volume path replaced by `secrets`; returns its output."""
    spec = COMPOSE["services"][service]
    args = [compose_value(a).replace("/data/kafka-secrets", str(secrets)) for a in spec["command"]]
    assert args[:3] == ["python", "-m", "mxw_shared.kafka_setup"], args
    result = subprocess.run(
        [sys.executable, *args[1:]],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@dataclass
class ComposeBroker:
    ports: dict[str, int]  # listener name → port on 127.0.0.1
    secrets: Path
    setup_output: str

    def settings(self, listener: str, user: str, **overrides: Any) -> CommonSettings:
        password = kafka_setup.password_path(self.secrets, user).read_text()
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": f"127.0.0.1:{self.ports[listener]}",
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_username": user,
            "kafka_password": SecretStr(password),
        }
        return CommonSettings(**(values | overrides))


@pytest.fixture(scope="module")
def compose_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeBroker]:
    root = tmp_path_factory.mktemp("compose-kafka")
    env = {k: str(v) for k, v in KAFKA["environment"].items()}
    listeners = [entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")]
    ports = {name: free_port() for name in listeners}
    config = {property_name(k): v for k, v in env.items() if k not in NOT_CONFIG}
    config |= {
        "listeners": ",".join(f"{n}://127.0.0.1:{p}" for n, p in ports.items()),
        "advertised.listeners": ",".join(
            f"{n}://127.0.0.1:{ports[n]}"
            for n in (e.split("://")[0] for e in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
        ),
        "controller.quorum.voters": f"{env['KAFKA_NODE_ID']}@127.0.0.1:{ports['CONTROLLER']}",
        "log.dirs": str(root / "data"),
    }
    properties = root / "server.properties"
    properties.write_text("".join(f"{k}={v}\n" for k, v in config.items()))
    secrets = root / "secrets"
    one_shot("kafka-secrets", secrets, {})
    jars = ensure_jars()
    java = ["java", "-Xmx384m", "-XX:TieredStopAtLevel=1", "-cp", f"{jars}/*"]
    subprocess.run(
        [
            *java,
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(properties),
            "--cluster-id",
            env["CLUSTER_ID"],
            "--ignore-formatted",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = (root / "server.log").open("wb")
    broker = subprocess.Popen(
        # The script then runs `java … $KAFKA_OPTS kafka.Kafka server.properties`.
        [
            str(ROOT / "deploy/compose/kafka-run.sh"),
            "bash",
            "-c",
            'exec "$@" $KAFKA_OPTS kafka.Kafka "$0"',
            str(properties),
            *java,
        ],
        env={
            **os.environ,
            "KAFKA_ADMIN_PASSWORD_FILE": str(kafka_setup.password_path(secrets, "admin")),
            "KAFKA_SASL_DIR": str(root),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", ports["CLIENT"], 120, broker)  # type: ignore[arg-type]
        setup = COMPOSE["services"]["kafka-setup"]["environment"]
        internal = setup["MXW_KAFKA_BOOTSTRAP_SERVERS"].rpartition(":")[2]
        assert env["KAFKA_LISTENERS"].count(f"INTERNAL://:{internal}") == 1
        setup_env = {k: str(v) for k, v in setup.items()} | {
            "MXW_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['INTERNAL']}",
            "MXW_KAFKA_PASSWORD_FILE": str(kafka_setup.password_path(secrets, "admin")),
        }
        output = one_shot("kafka-setup", secrets, setup_env)
        assert "Kafka users and ACLs ready" in output, output
        yield ComposeBroker(ports, secrets, output)
    except BaseException:
        print((root / "server.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(60)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
        log.close()


OUTSIDE = compose_value("${MXW_KAFKA_OUTSIDE_SYSTEMS:-outside}")


def test_the_one_shots_command_lines_name_the_same_outside_systems() -> None:
    for service in ("kafka-secrets", "kafka-setup"):
        args = COMPOSE["services"][service]["command"]
        assert args[args.index("--outside") + 1] == "${MXW_KAFKA_OUTSIDE_SYSTEMS:-outside}"


async def write(settings: CommonSettings, topic: str) -> None:
    producer = AIOKafkaProducer(**client_options(settings), acks="all", request_timeout_ms=15_000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", key=b"compose")
    finally:
        await producer.stop()


async def test_a_service_publishes_with_its_generated_password(
    compose_broker: ComposeBroker,
) -> None:
    chunker = compose_broker.settings("CLIENT", "chunker")
    await check_access(chunker)
    await write(chunker, topics.CHUNKS_READY)


async def test_an_outside_system_on_the_host_listener_gets_audio_uploaded_only(
    compose_broker: ComposeBroker,
) -> None:
    outside = compose_broker.settings("HOST", OUTSIDE)
    await write(outside, topics.AUDIO_UPLOADED)
    with pytest.raises(TopicAuthorizationFailedError):
        await write(outside, topics.JOB_STATUS)


@pytest.mark.parametrize("listener", ["CLIENT", "HOST"])
async def test_the_super_user_cannot_sign_in_where_services_and_outsiders_do(
    compose_broker: ComposeBroker, listener: str
) -> None:
    # PLAIN (the super user's mechanism) is enabled on INTERNAL and CONTROLLER only.
    admin = compose_broker.settings(listener, "admin", kafka_sasl_mechanism="PLAIN")
    with pytest.raises(KafkaAccessError, match="principal 'admin'"):
        await check_access(admin)


async def test_a_wrong_password_is_refused(compose_broker: ComposeBroker) -> None:
    wrong = compose_broker.settings("CLIENT", "gateway", kafka_password=SecretStr("nope-nope"))
    with pytest.raises(KafkaAccessError, match="refused principal 'gateway'"):
        await check_access(wrong)


def test_no_password_in_the_set_up_output(compose_broker: ComposeBroker) -> None:
    for path in compose_broker.secrets.glob("*/password"):
        assert path.read_text() not in compose_broker.setup_output, path.parent.name
