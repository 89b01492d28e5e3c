"""Apache Kafka itself, from Maven Central, on this machine: one broker or a cluster of
several, each a KRaft node in combined mode (broker and controller in one JVM), on loopback
ports with its own log directory. Used by `mxw up --broker kafka` and by the tests that need
the engine we deploy to (idempotent producer, replication, SASL/SCRAM, ACLs, real group
coordination).

The jars come from deploy/local/kafka/pom.xml through `mvn dependency:copy-dependencies`,
cached under ~/.cache/mxwhisper (XDG_CACHE_HOME, or MXW_KAFKA_CACHE) by the pom's content.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mxw_local.infra import free_port, wait_for_port

POM = Path(__file__).resolve().parents[2] / "kafka" / "pom.xml"
ADMIN_USER = "admin"
# The controller listener takes SASL/PLAIN from the brokers (SCRAM users live in the
# metadata the controllers serve, so SCRAM cannot authenticate that listener).
SCRAM_MECHANISM = "SCRAM-SHA-512"


class KafkaUnavailable(RuntimeError):
    """Apache Kafka cannot run here: no Java, no Maven, or the fetch failed."""


def kafka_version(pom: Path = POM) -> str:
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    if found is None:
        raise KafkaUnavailable(f"{pom} names no kafka.version")
    return found.group(1)


def cache_root() -> Path:
    if explicit := os.environ.get("MXW_KAFKA_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mxwhisper"


def unavailable_reason() -> str | None:
    """Why Apache Kafka cannot be fetched and run here, or None when it can."""
    if shutil.which("java") is None:
        return "no `java` on PATH (Apache Kafka needs Java 17 or newer)"
    if not libs_dir().is_dir() and shutil.which("mvn") is None:
        return "no `mvn` on PATH to fetch Apache Kafka from Maven Central"
    return None


def libs_dir(pom: Path = POM) -> Path:
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    return cache_root() / f"kafka-{kafka_version(pom)}-{digest}" / "libs"


def ensure_jars(pom: Path = POM) -> Path:
    """The folder of Kafka's jars, fetched with Maven on first use; returns it."""
    target = libs_dir(pom)
    if target.is_dir():
        return target
    if reason := unavailable_reason():
        raise KafkaUnavailable(reason)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=target.parent))
    result = subprocess.run(
        [
            "mvn",
            "--batch-mode",
            "--quiet",
            "--file",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise KafkaUnavailable(
            f"fetching Apache Kafka {kafka_version(pom)} with Maven failed:\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )
    try:
        staging.rename(target)  # atomic: a concurrent fetch leaves one complete folder
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


LOG4J2 = """\
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: INFO
      - name: state.change.logger
        level: WARN
"""


@dataclass(frozen=True)
class ScramCredentials:
    """A SASL/SCRAM-SHA-512 principal's name and password."""

    username: str
    password: str


@dataclass
class KafkaNode:
    """One KRaft node (broker + controller) of a cluster."""

    node_id: int
    port: int
    controller_port: int
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def log_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def properties_path(self) -> Path:
        return self.root / "server.properties"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class ApacheKafka:
    """`brokers` KRaft nodes on 127.0.0.1 under `root`.

    With `sasl`, clients authenticate with SASL/SCRAM-SHA-512 (SASL_PLAINTEXT: loopback) and
    the StandardAuthorizer denies what no ACL allows; `admin` is the super user the brokers
    talk to each other as, created when the storage is formatted. Topics are never created
    automatically. Replication defaults follow the cluster size (3 brokers: internal topics
    replicated 3 times, min.insync.replicas 2)."""

    def __init__(
        self,
        root: Path,
        brokers: int = 1,
        *,
        sasl: bool = False,
        ports: list[int] | None = None,
        heap: str = "384m",
        extra_config: dict[str, str] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.sasl = sasl
        self.heap = heap
        self.extra_config = extra_config or {}
        client_ports = ports or [free_port() for _ in range(brokers)]
        if len(client_ports) != brokers:
            raise ValueError(f"{brokers} brokers need {brokers} ports, got {client_ports}")
        self.nodes = [
            KafkaNode(i + 1, port, free_port(), self.root / f"node-{i + 1}")
            for i, port in enumerate(client_ports)
        ]
        self.admin = ScramCredentials(ADMIN_USER, self._secret("admin-password"))
        self.cluster_id = self._cluster_id()

    # ---- what clients need ----

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def client_options(self, credentials: ScramCredentials | None = None) -> dict[str, str]:
        """aiokafka keyword arguments for a client of this cluster (the admin by default)."""
        if not self.sasl:
            return {"bootstrap_servers": self.bootstrap_servers}
        who = credentials or self.admin
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": who.username,
            "sasl_plain_password": who.password,
        }

    def client_properties(self, credentials: ScramCredentials | None = None) -> dict[str, str]:
        """The same as Kafka client properties (the Java tools' --command-config)."""
        if not self.sasl:
            return {"bootstrap.servers": self.bootstrap_servers}
        who = credentials or self.admin
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.jaas.config": _jaas("scram.ScramLoginModule", who),
        }

    # ---- life cycle ----

    def start(self, timeout_s: float = 120) -> str:
        """Format what is not formatted yet, start every node, wait until all listen."""
        jars = ensure_jars()
        for node in self.nodes:
            self._write_config(node)
            if not (node.log_dir / "meta.properties").exists():
                self._format(jars, node)
        for node in self.nodes:
            self._spawn(jars, node)
        for node in self.nodes:
            self._await_listening(node, timeout_s)
        return self.bootstrap_servers

    def __enter__(self) -> ApacheKafka:
        """`with ApacheKafka(...) as kafka`: started, and stopped on the way out (also when
        a node fails to start: the others are not left running)."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 60) -> None:
        """Stop every node (SIGTERM: a controlled shutdown), then kill what is left."""
        for node in self.nodes:
            if node.running and node.proc is not None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            self._reap(node, timeout_s)

    def stop_node(self, node_id: int, timeout_s: float = 60) -> None:
        node = self.node(node_id)
        if node.running and node.proc is not None:
            node.proc.send_signal(signal.SIGTERM)
        self._reap(node, timeout_s)

    def kill_node(self, node_id: int) -> None:
        """kill -9: no controlled shutdown, no flush."""
        node = self.node(node_id)
        if node.running and node.proc is not None:
            node.proc.kill()
        self._reap(node, 10)

    def start_node(self, node_id: int, timeout_s: float = 120) -> None:
        """Start one node again; formats it first when its log directory was wiped."""
        jars = ensure_jars()
        node = self.node(node_id)
        if not (node.log_dir / "meta.properties").exists():
            self._format(jars, node)
        self._spawn(jars, node)
        self._await_listening(node, timeout_s)

    def wipe_node(self, node_id: int) -> None:
        """Delete a stopped node's log directory: its replicas and metadata are gone."""
        node = self.node(node_id)
        if node.running:
            raise RuntimeError(f"node {node_id} is running; stop or kill it first")
        shutil.rmtree(node.log_dir, ignore_errors=True)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def node_by_port(self, port: int) -> KafkaNode:
        return next(n for n in self.nodes if n.port == port)

    def producer_ids(self, topic: str) -> list[int]:
        """The producer id of every record batch of `topic` on disk (any node's replicas),
        as Kafka's own DumpLogSegments reads them: -1 for a batch written without the
        idempotent producer, the broker-assigned id otherwise."""
        segments = sorted(
            str(segment) for node in self.nodes for segment in node.log_dir.glob(f"{topic}-*/*.log")
        )
        if not segments:
            return []
        result = subprocess.run(
            self._java(ensure_jars(), "kafka.tools.DumpLogSegments", "--files", ",".join(segments)),
            capture_output=True,
            text=True,
            check=True,
        )
        return [int(found) for found in re.findall(r"producerId: (-?\d+)", result.stdout)]

    def logs_tail(self, chars: int = 4000) -> str:
        parts = []
        for node in self.nodes:
            if node.log_path.exists():
                parts.append(f"--- node {node.node_id} ({node.log_path})")
                parts.append(node.log_path.read_text(errors="replace")[-chars:])
        return "\n".join(parts)

    # ---- internals ----

    def _secret(self, name: str) -> str:
        """A generated secret of this cluster, kept in its root so that a restart reuses it."""
        path = self.root / name
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def _cluster_id(self) -> str:
        """KRaft's cluster id: 16 random bytes, URL-safe base64 without padding. Like Kafka's
        own Uuid.randomUuid, never one that starts with "-": command-line tools would read
        it as an option (kafka-storage format: "--cluster-id: expected one argument")."""
        path = self.root / "cluster-id"
        if not path.exists():
            import base64

            self.root.mkdir(parents=True, exist_ok=True)
            raw = "-"
            while raw.startswith("-"):
                raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            path.write_text(raw)
        return path.read_text().strip()

    def _config(self, node: KafkaNode) -> dict[str, str]:
        count = len(self.nodes)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        client_protocol = "SASL_PLAINTEXT" if self.sasl else "PLAINTEXT"
        controller_protocol = "SASL_PLAINTEXT" if self.sasl else "PLAINTEXT"
        config = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": (
                f"CLIENT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
            ),
            "advertised.listeners": f"CLIENT://127.0.0.1:{node.port}",
            "listener.security.protocol.map": (
                f"CLIENT:{client_protocol},CONTROLLER:{controller_protocol}"
            ),
            "inter.broker.listener.name": "CLIENT",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(node.log_dir),
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": str(min(3, count)),
            "transaction.state.log.replication.factor": str(min(3, count)),
            "transaction.state.log.min.isr": str(min(2, count)),
            "min.insync.replicas": str(min(2, count)),
            "default.replication.factor": str(min(3, count)),
            "num.partitions": "3",
            # Small segments and quick checks: this runs on laptops and 2-core CI.
            "log.segment.bytes": str(64 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
        }
        if self.sasl:
            admin = self.admin
            config |= {
                "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
                "listener.name.client.sasl.enabled.mechanisms": SCRAM_MECHANISM,
                "listener.name.client.scram-sha-512.sasl.jaas.config": _jaas(
                    "scram.ScramLoginModule", admin
                ),
                "sasl.mechanism.controller.protocol": "PLAIN",
                "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
                "listener.name.controller.plain.sasl.jaas.config": _jaas(
                    "plain.PlainLoginModule", admin, f'user_{admin.username}="{admin.password}"'
                ),
                "authorizer.class.name": (
                    "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
                ),
                "super.users": f"User:{admin.username}",
                "allow.everyone.if.no.acl.found": "false",
            }
        return config | self.extra_config

    def _write_config(self, node: KafkaNode) -> None:
        node.root.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={v}" for k, v in self._config(node).items()]
        node.properties_path.write_text("\n".join(lines) + "\n")
        (self.root / "log4j2.yaml").write_text(LOG4J2)

    def _java(self, jars: Path, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",  # quicker start on small machines
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.root / 'log4j2.yaml'}",
            "-cp",
            f"{jars}/*",
            main,
            *args,
        ]

    def _format(self, jars: Path, node: KafkaNode) -> None:
        args = [
            "format",
            "--config",
            str(node.properties_path),
            f"--cluster-id={self.cluster_id}",
            "--ignore-formatted",
        ]
        if self.sasl:
            admin = self.admin
            args += [
                "--add-scram",
                f"{SCRAM_MECHANISM}=[name={admin.username},password={admin.password}]",
            ]
        result = subprocess.run(
            self._java(jars, "kafka.tools.StorageTool", *args), capture_output=True, text=True
        )
        if result.returncode != 0:
            raise KafkaUnavailable(
                f"formatting node {node.node_id} failed: {result.stdout}{result.stderr}"
            )

    def _spawn(self, jars: Path, node: KafkaNode) -> None:
        if node.running:
            return
        if node._log is not None:  # the node died: its old process's log handle
            node._log.close()
        node._log = node.log_path.open("ab")
        node.proc = subprocess.Popen(
            self._java(jars, "kafka.Kafka", str(node.properties_path)),
            stdout=node._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _await_listening(self, node: KafkaNode, timeout_s: float) -> None:
        assert node.proc is not None
        try:
            wait_for_port("127.0.0.1", node.port, timeout_s, node.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise KafkaUnavailable(
                f"Kafka node {node.node_id} did not start: {exc}\n{self.logs_tail()}"
            ) from exc

    def _reap(self, node: KafkaNode, timeout_s: float) -> None:
        if node.proc is not None:
            try:
                node.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        node.proc = None
        if node._log is not None:
            node._log.close()
            node._log = None


def _jaas(module: str, who: ScramCredentials, extra: str = "") -> str:
    return (
        f"org.apache.kafka.common.security.{module} required"
        f' username="{who.username}" password="{who.password}"{" " + extra if extra else ""};'
    )


def main() -> None:
    """Set-up step (`./mxw setup`, every `./mxw` command): fetch Kafka's jars when Java is
    here, so that `mxw up --broker kafka` and the Kafka tests start without a download."""
    if libs_dir().is_dir():
        return
    if reason := unavailable_reason():
        print(f"mxw setup: Apache Kafka not fetched: {reason}; the embedded broker still works")
        return
    print(f"mxw setup: fetching Apache Kafka {kafka_version()} from Maven Central")
    ensure_jars()


if __name__ == "__main__":
    main()
