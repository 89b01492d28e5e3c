"""The gateway as a real process with JSON logs (the cluster setting), started the way its
image starts it: every line it writes to stdout/stderr, from its own code and from the
libraries under it (uvicorn, aiokafka…), is a JSON object, and a bearer token it was sent
appears in none of them. (Model-loading progress bars, the other non-JSON output a worker
could write, are covered in test_units.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx


def _forged(token: str) -> str:
    head, claims, signature = token.split(".")
    return f"{head}.{claims}.{'B' * len(signature)}"


def _start(infra, service: str) -> tuple[subprocess.Popen[bytes], str]:
    from mxw_local.infra import free_port

    port = free_port()
    env = {
        **os.environ,
        **infra.env(service, port, MXW_LOG_FORMAT="json", MXW_HOST="127.0.0.1"),
        "OTEL_TRACES_EXPORTER": "none",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", f"mxw_{service}.main"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], base: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"{base}: process exited during start-up"
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{base}: never became ready"
        time.sleep(0.2)


def test_gateway_process_logs_json_lines_without_tokens(infra, dev_issuer) -> None:
    token = dev_issuer.mint("obs-process")
    forged = _forged(token)
    procs = {"gateway": _start(infra, "gateway")}
    outputs: dict[str, str] = {}
    try:
        for proc, base in procs.values():
            _wait_ready(proc, base)
        with httpx.Client(base_url=procs["gateway"][1], timeout=30) as client:
            bearer = {"Authorization": f"Bearer {token}"}
            assert client.get("/jobs", headers=bearer).status_code == 200
            assert client.get(f"/jobs/{uuid.uuid4()}", headers=bearer).status_code == 404
            assert client.post("/jobs", headers=bearer, files={}).status_code in (400, 415, 422)
            refused = client.get("/jobs", headers={"Authorization": f"Bearer {forged}"})
            assert refused.status_code == 401
            # A token in the wrong place (a query string) is refused, not echoed to the log.
            assert client.get("/jobs", params={"access_token": token}).status_code == 401
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, (proc, _) in procs.items():
            out, err = proc.communicate(timeout=60)
            outputs[name] = (out + err).decode()

    for name, text in outputs.items():
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines, f"{name} wrote no log lines"
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                raise AssertionError(f"{name}: not a JSON log line: {line[:200]!r}") from None
            assert isinstance(record, dict), line
            assert "timestamp" in record, line
            assert "level" in record, line
        assert any(json.loads(line).get("service") == name for line in lines), name
        for secret in (token, forged):
            assert secret not in text
            assert secret.split(".")[2] not in text
