"""`mxw submit --hotword TERM` (repeatable) and `--no-use-vocabulary`: the job's own names
and terms, sent as the upload form's hotwords field (one term a line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from mxw_local.cli import app
from typer.testing import CliRunner


def test_hotwords_are_sent_with_the_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    audio = tmp_path / "a.ogg"
    audio.write_bytes(b"x")
    sent: list[dict[str, Any]] = []

    def post(url: str, **kwargs: Any) -> httpx.Response:
        sent.append({"url": url, "data": kwargs["data"]})
        return httpx.Response(202, json={"id": "00000000-0000-0000-0000-000000000001"})

    monkeypatch.setattr(httpx, "post", post)
    args = ["submit", str(audio), "--data-dir", str(tmp_path), "--no-follow", "--token", "t"]
    gateway = ["--gateway", "http://gw.test", "--notifier", "http://nt.test"]
    result = CliRunner().invoke(
        app, [*args, *gateway, "--hotword", "Siobhan", "--hotword", "pg vector"]
    )
    assert result.exit_code == 0, result.output
    assert sent[-1]["data"]["hotwords"] == "Siobhan\npg vector"
    assert "use_vocabulary" not in sent[-1]["data"]

    result = CliRunner().invoke(app, [*args, *gateway, "--no-use-vocabulary"])
    assert result.exit_code == 0, result.output
    assert "hotwords" not in sent[-1]["data"]
    assert sent[-1]["data"]["use_vocabulary"] == "false"


def test_the_decoding_mode_is_sent_when_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    audio = tmp_path / "a.ogg"
    audio.write_bytes(b"x")
    sent: list[dict[str, Any]] = []

    def post(url: str, **kwargs: Any) -> httpx.Response:
        sent.append(kwargs["data"])
        return httpx.Response(202, json={"id": "00000000-0000-0000-0000-000000000001"})

    monkeypatch.setattr(httpx, "post", post)
    args = ["submit", str(audio), "--data-dir", str(tmp_path), "--no-follow", "--token", "t"]
    gateway = ["--gateway", "http://gw.test", "--notifier", "http://nt.test"]
    assert CliRunner().invoke(app, [*args, *gateway, "--decoding", "sequential"]).exit_code == 0
    assert sent[-1]["decoding"] == "sequential"
    assert CliRunner().invoke(app, [*args, *gateway]).exit_code == 0
    assert "decoding" not in sent[-1]  # the transcriber's choice
