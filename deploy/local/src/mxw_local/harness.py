"""The whole stack as real processes, started the way the README's run command starts it
(`mxw up`), for the end-to-end and fault tests and the soak bench. A caller can find, kill
and restart what runs in it: each service, the broker, the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from mxw_shared.devissuer import DevIssuer

from mxw_local.infra import EmbeddedPostgres, free_port
from mxw_local.stack import BrokerKind, StackInfo

MXW = Path(sys.executable).with_name("mxw")
PORTS = (
    "gateway",
    "notifier",
    "transcriber",
    "diarizer",
    "chunker",
    "embedder",
    "postgres",
    "kafka",
)


@dataclass(frozen=True)
class Stack:
    info: StackInfo
    data_dir: Path
    issuer: DevIssuer
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]

    def token(self, user: str, admin: bool = False) -> str:
        return self.issuer.mint(user, admin=admin)

    def auth(self, user: str, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, admin)}"}

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def service_pid(self, service: str) -> int | None:
        """The running process of one service (the supervisor restarts it when it dies)."""
        for child in psutil.Process(self.proc.pid).children():
            try:
                if f"mxw_{service}.main" in child.cmdline():
                    return int(child.pid)
            except psutil.NoSuchProcess:
                continue
        return None

    def broker_pid(self) -> int | None:
        for child in psutil.Process(self.proc.pid).children():
            try:
                cmd = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            tansu = "broker" in cmd and f"tcp://127.0.0.1:{self.ports['kafka']}" in cmd
            apache = "kafka.Kafka" in cmd and any(str(self.data_dir) in arg for arg in cmd)
            if tansu or apache:
                return int(child.pid)
        return None

    def kill(self, service: str) -> int:
        pid = self.service_pid(service)
        assert pid is not None, f"{service} is not running"
        os.kill(pid, signal.SIGKILL)
        return pid

    def postgres(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.data_dir / "postgres", self.ports["postgres"])

    def log_tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@contextmanager
def run_stack(
    data_dir: Path,
    env: dict[str, str] | None = None,
    whisper_model: str = "tiny.en",
    broker: BrokerKind = "embedded",
    kafka_bootstrap: str | None = None,
) -> Iterator[Stack]:
    """`mxw up --broker <broker>` on free ports; `env` adds MXW_* settings that every service
    reads. With broker="external", `kafka_bootstrap` is a cluster the caller runs (and
    breaks). Stopped with Ctrl-C at the end, which must exit cleanly (AssertionError
    otherwise)."""
    log = data_dir / "stack.log"
    ports = {name: free_port() for name in PORTS}
    cmd = [str(MXW), "up", "--data-dir", str(data_dir), "--no-color"]
    cmd += ["--whisper-model", whisper_model, "--broker", broker]
    if kafka_bootstrap is not None:
        cmd += ["--kafka-bootstrap", kafka_bootstrap]
    for name, port in ports.items():
        cmd += [f"--{name}-port", str(port)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    deadline = time.monotonic() + 300
    info_path = StackInfo.path(data_dir)
    while not info_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = log.read_text(errors="replace")[-6000:]
            raise RuntimeError(f"stack did not come up (rc={proc.poll()}):\n{tail}")
        time.sleep(0.5)
    stack = Stack(
        StackInfo.load(data_dir), data_dir, DevIssuer.ensure(data_dir / "auth"), proc, log, ports
    )
    try:
        yield stack
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        assert rc == 0, f"stack did not stop cleanly (rc={rc}):\n{stack.log_tail()}"
        assert not info_path.exists()
