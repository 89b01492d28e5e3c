"""`mxw up`: the whole stack on this machine as supervised processes, no Docker.

Order: PostgreSQL (embedded) → migrate → broker → topics → dev issuer → the six services.
The broker is the embedded tansu (in-memory topics, the default) or, with `--broker kafka`,
Apache Kafka itself (one KRaft node from Maven Central, logs kept in the data directory), or,
with `--broker external --kafka-bootstrap HOST:PORT,...`, a Kafka cluster someone else runs:
the supervisor neither starts nor watches it, and creates the topics there with the
replication that MXW_KAFKA_REPLICATION_FACTOR asks for.
A service that exits is restarted with backoff; logs are prefixed with the service name;
Ctrl-C or SIGTERM stops everything cleanly (services first, so they flush their outboxes).
The data directory (database, blobs, keys, model cache, Kafka's logs) survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx
from mxw_shared import webhook_secrets
from mxw_shared.devissuer import DevIssuer
from mxw_shared.kafka import ensure_topics
from mxw_shared.migrate import migrate
from mxw_shared.settings import CommonSettings

from mxw_local.apache_kafka import ApacheKafka
from mxw_local.infra import EmbeddedKafka, EmbeddedPostgres

BrokerKind = Literal["embedded", "kafka", "external"]

SERVICES = ("gateway", "notifier", "transcriber", "diarizer", "chunker", "embedder")
COLORS = {
    "gateway": 36,
    "notifier": 35,
    "transcriber": 33,
    "diarizer": 31,
    "chunker": 32,
    "embedder": 34,
}


def broker_problem(broker: BrokerKind, kafka_bootstrap: str | None) -> str | None:
    """What is wrong with this choice of broker and bootstrap servers, if anything."""
    if broker == "external" and not kafka_bootstrap:
        return "--broker external needs --kafka-bootstrap HOST:PORT[,HOST:PORT...]"
    if broker != "external" and kafka_bootstrap:
        return "--kafka-bootstrap names an external cluster: use it with --broker external"
    return None


@dataclass
class StackConfig:
    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    postgres_port: int = 54329
    kafka_port: int = 19092
    broker: BrokerKind = "embedded"
    # broker="external" only: the cluster's bootstrap servers.
    kafka_bootstrap: str | None = None
    ports: dict[str, int] = field(
        default_factory=lambda: {
            "gateway": 8000,
            "notifier": 8001,
            "transcriber": 8002,
            "chunker": 8003,
            "embedder": 8004,
            "diarizer": 8005,
        }
    )
    whisper_model: str = "base"
    log_format: str = "console"
    color: bool = True
    # The web page's "sign in as anyone" (MXW_DEV_SIGN_IN): anyone who reaches the gateway
    # can mint admin tokens, which is what a stack for one developer wants on loopback.
    dev_sign_in: bool = True

    def __post_init__(self) -> None:
        if problem := broker_problem(self.broker, self.kafka_bootstrap):
            raise ValueError(problem)

    def url(self, service: str) -> str:
        return f"http://{self.host}:{self.ports[service]}"

    def exposure_warning(self) -> str | None:
        """A warning when dev sign-in is reachable from beyond this machine."""
        if not self.dev_sign_in or _is_loopback(self.host):
            return None
        return (
            f"WARNING: dev sign-in is on and the services listen on {self.host}: anyone who"
            f" reaches {self.url('gateway')} can sign in as any user, admin included."
            " Use --host 127.0.0.1, or --no-dev-sign-in with a real token issuer."
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@dataclass
class StackInfo:
    """What `mxw` commands need to find a running stack: written to <data>/stack.json."""

    gateway_url: str
    notifier_url: str
    embedder_url: str
    database_url: str
    kafka_bootstrap_servers: str
    jwks_path: str
    pid: int

    @staticmethod
    def path(data_dir: Path) -> Path:
        return data_dir / "stack.json"

    @classmethod
    def load(cls, data_dir: Path) -> StackInfo:
        return cls(**json.loads(cls.path(data_dir).read_text()))


def _generated_secret(path: Path, make: Callable[[], str]) -> str:
    """A secret of the local stack in .data: generated once, 0600, kept across restarts."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
    return path.read_text().strip()


def _service_token(data_dir: Path) -> str:
    """Shared secret the gateway presents to the embedder."""
    return _generated_secret(data_dir / "auth" / "service-token", lambda: secrets.token_urlsafe(32))


def _webhook_secret_key(data_dir: Path) -> str:
    """The key webhook secrets are stored under (gateway seals, notifier opens): losing it
    makes every registered endpoint's secret unreadable, so it stays with the data."""
    return _generated_secret(data_dir / "auth" / "webhook-secret-key", webhook_secrets.new_key)


class Supervisor:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir.resolve()
        self.postgres = EmbeddedPostgres(self.data_dir / "postgres", config.postgres_port)
        # The broker this supervisor runs and watches; None for an external cluster.
        self.kafka: EmbeddedKafka | ApacheKafka | None = None
        if config.broker == "kafka":
            self.kafka = ApacheKafka(self.data_dir / "kafka", ports=[config.kafka_port])
        elif config.broker == "embedded":
            self.kafka = EmbeddedKafka(
                config.kafka_port, log_path=self.data_dir / "logs" / "tansu.log"
            )
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()
        self.restarts: dict[str, int] = dict.fromkeys(SERVICES, 0)

    @property
    def bootstrap_servers(self) -> str:
        if self.kafka is None:
            assert self.config.kafka_bootstrap is not None  # StackConfig checks it
            return self.config.kafka_bootstrap
        return self.kafka.bootstrap_servers

    def say(self, who: str, line: str) -> None:
        label = f"{who:<11}|"
        if self.config.color and who in COLORS:
            label = f"\x1b[{COLORS[who]}m{label}\x1b[0m"
        print(f"{label} {line}", flush=True)

    def service_env(self, service: str) -> dict[str, str]:
        cfg = self.config
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "MXW_SERVICE_NAME": service,
            "MXW_HOST": cfg.host,
            "MXW_PORT": str(cfg.ports[service]),
            "MXW_LOG_FORMAT": cfg.log_format,
            "MXW_DATABASE_URL": self.postgres.dsn,
            "MXW_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            # tansu rejects InitProducerId: no idempotent producer there; consumers
            # de-duplicate either way.
            "MXW_KAFKA_IDEMPOTENT_PRODUCER": str(cfg.broker != "embedded").lower(),
            "MXW_BLOB_ROOT": str(self.data_dir / "blobs"),
            "MXW_AUTH_JWKS_URL": (self.data_dir / "auth" / "jwks.json").as_uri(),
            "MXW_EMBEDDER_URL": cfg.url("embedder"),
            "MXW_MODEL_CACHE_DIR": str(self.data_dir / "models"),
        }
        token = _service_token(self.data_dir)
        if service == "gateway":
            env["MXW_EMBEDDER_SERVICE_TOKEN"] = token
            env["MXW_PUBLIC_BASE_URL"] = cfg.url("gateway")
            env["MXW_DEV_JWKS_PATH"] = str(self.data_dir / "auth" / "jwks.json")
            env["MXW_DEV_SIGN_IN"] = "true" if cfg.dev_sign_in else "false"
            env["MXW_WEB_NOTIFIER_URL"] = cfg.url("notifier")  # the web page's live feed
        if service == "embedder":
            env["MXW_SERVICE_TOKEN"] = token
        if service in ("gateway", "notifier"):
            env["MXW_WEBHOOK_SECRET_KEY"] = _webhook_secret_key(self.data_dir)
        if service == "transcriber":
            env.setdefault("MXW_DEFAULT_MODEL", cfg.whisper_model)
        return env

    async def start_infra(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.say("stack", f"data directory {self.data_dir}")
        if warning := self.config.exposure_warning():
            self.say("stack", warning)
        dsn = await asyncio.to_thread(self.postgres.start)
        self.say("postgres", f"ready on 127.0.0.1:{self.config.postgres_port}")
        applied = await migrate(dsn)
        self.say("migrate", f"schema up to date (applied now: {applied or 'none'})")
        if self.kafka is not None:
            await asyncio.to_thread(self.kafka.start)
        self.say("kafka", f"{self.broker_name()} ready on {self.bootstrap_servers}")
        await self.create_topics()
        DevIssuer.ensure(self.data_dir / "auth")

    def broker_name(self) -> str:
        if self.kafka is None:
            return "external Kafka cluster (not started or watched here)"
        if isinstance(self.kafka, ApacheKafka):
            return f"Apache Kafka (logs in {self.kafka.root})"
        return "tansu (in-memory topics)"

    def broker_exit_code(self) -> int | None:
        """The broker's exit code once it has exited; None while it runs."""
        kafka = self.kafka
        if kafka is None:
            return None
        proc = kafka.nodes[0].proc if isinstance(kafka, ApacheKafka) else kafka.proc
        return None if proc is None else proc.poll()

    async def create_topics(self) -> None:
        """Replication comes from MXW_KAFKA_REPLICATION_FACTOR (1 unless set), the
        brokers' min.insync.replicas from the cluster's own configuration."""
        settings = CommonSettings(
            kafka_bootstrap_servers=self.bootstrap_servers, kafka_partitions=3
        )
        report = await ensure_topics(settings)
        self.say("kafka", f"topics ready ({report.summary()})")

    async def run_service(self, name: str) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"mxw_{name}.main",
                env=self.service_env(name),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children
            )
            self.procs[name] = proc
            assert proc.stdout is not None
            async for raw in proc.stdout:
                self.say(name, raw.decode(errors="replace").rstrip())
            code = await proc.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - started > 60:
                backoff = 1.0
            self.restarts[name] += 1
            self.say(name, f"exited with {code}; restarting in {backoff:.0f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            backoff = min(backoff * 2, 30.0)

    async def watch_kafka(self) -> None:
        """If the broker dies, bring it back with its topics: Apache Kafka from its logs; the
        embedded broker empty (in memory), the outbox and the stage sweepers re-send what
        was lost."""
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 2.0)
            code = self.broker_exit_code()
            if self.stopping.is_set() or code is None or self.kafka is None:
                continue
            self.say("kafka", f"broker exited with {code}; restarting")
            await asyncio.to_thread(self.kafka.start)
            await self.create_topics()

    async def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(SERVICES)
        async with httpx.AsyncClient(timeout=2) as client:
            while pending and time.monotonic() < deadline and not self.stopping.is_set():
                for name in sorted(pending):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{self.config.url(name)}/readyz")).status_code == 200:
                            pending.discard(name)
                            self.say(name, "ready")
                await asyncio.sleep(0.5)
        if pending:
            raise TimeoutError(f"not ready after {timeout_s}s: {', '.join(sorted(pending))}")

    def write_info(self) -> None:
        info = StackInfo(
            gateway_url=self.config.url("gateway"),
            notifier_url=self.config.url("notifier"),
            embedder_url=self.config.url("embedder"),
            database_url=self.postgres.dsn,
            kafka_bootstrap_servers=self.bootstrap_servers,
            jwks_path=str(self.data_dir / "auth" / "jwks.json"),
            pid=os.getpid(),
        )
        StackInfo.path(self.data_dir).write_text(json.dumps(asdict(info), indent=2))

    async def stop_services(self, grace_s: float = 30) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                self.say(name, "did not stop in time; killing")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.start_infra()
            tasks = [asyncio.create_task(self.run_service(n), name=n) for n in SERVICES]
            tasks.append(asyncio.create_task(self.watch_kafka(), name="kafka-watch"))
            ready = asyncio.create_task(self.wait_ready())
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({ready, stop}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                ready.result()
                self.write_info()
                self.say("stack", f"up: API {self.config.url('gateway')}/docs · Ctrl-C stops")
                if warning := self.config.exposure_warning():
                    self.say("stack", warning)  # again: the services' logs scrolled it away
            else:
                ready.cancel()
            await self.stopping.wait()
            return 0
        finally:
            self.stopping.set()
            self.say("stack", "stopping")
            await self.stop_services()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.kafka is not None:
                self.kafka.stop()
            await asyncio.to_thread(self.postgres.stop, True)
            StackInfo.path(self.data_dir).unlink(missing_ok=True)
            self.say("stack", "stopped")
