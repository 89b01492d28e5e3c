"""POST /jobs/from-url against a real HTTP server on 127.0.0.1 (allowed explicitly), the real
Postgres and broker; and the target policy as pure functions."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import threading
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from mxw_gateway.ingest.domain import filename_from_url
from mxw_shared import netguard
from mxw_shared.netguard import (
    BadUrl,
    ForbiddenTarget,
    check_addresses,
    parse_networks,
    parse_target,
)

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "audio"
SHORT = (FIXTURES / "short_en.ogg").read_bytes()
SOLAR = (FIXTURES / "solar_and_bread.ogg").read_bytes()
LIMIT = 100_000  # conftest's start_gateway upload limit, which ingest uses by default
USER = "ursula-url"


def _gzip(chunks: Iterable[bytes]) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([*(compressor.compress(c) for c in chunks), compressor.flush()])


@functools.cache
def gzip_bomb() -> bytes:
    """A few hundred bytes that two rounds of gunzip turn into 64 MiB (the limit is 100 KB)."""
    zeros = bytes(1024 * 1024)
    return _gzip([_gzip(zeros for _ in range(64))])


class AudioServer(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str, length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == "/audio/short_en.ogg":
            self._send(200, SHORT, "audio/ogg")
        elif parts.path == "/audio/solar.ogg":
            self._send(200, SOLAR, "application/octet-stream")
        elif parts.path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(LIMIT * 3))
            self.end_headers()
            self.wfile.write(b"\0" * 1024)
        elif parts.path == "/big-undeclared":
            # HTTP/1.0 without Content-Length: the body ends when the connection closes.
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.end_headers()
            for _ in range(30):
                self.wfile.write(SOLAR[:10_000])
        elif parts.path == "/bomb.wav":
            # Sent whatever the client asked for (Accept-Encoding: identity).
            body = gzip_bomb()
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Encoding", "gzip, gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif parts.path == "/echo-encoding":
            self._send(200, self.headers.get("Accept-Encoding", "").encode(), "text/plain")
        elif parts.path == "/notes.wav":
            self._send(200, b"these are meeting notes, not audio\n" * 100, "audio/wav")
        elif parts.path == "/slow.ogg":
            self.send_response(200)
            self.send_header("Content-Type", "audio/ogg")
            self.send_header("Content-Length", str(len(SHORT)))
            self.end_headers()
            try:
                for i in range(0, len(SHORT), 2000):
                    self.wfile.write(SHORT[i : i + 2000])
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass  # the gateway gave up and closed the connection
        elif parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"not here", "text/plain")


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), AudioServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
async def client(start_gateway):
    async with start_gateway(
        ingest_allowed_networks=["127.0.0.1/32"], ingest_timeout_s=2.0, ingest_max_redirects=3
    ) as c:
        yield c


@pytest.fixture(scope="module")
def headers(token) -> dict[str, str]:
    return token(USER)


@pytest.fixture(scope="module")
def blob_root(infra) -> Path:
    return infra.root / "gateway-blobs"


def blob_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


async def job_count(db) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = $1", USER)
    return count


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    return body


async def test_job_from_url_has_the_content_hash_and_announces_the_audio(
    client, headers, origin, db, read_topic
):
    response = await client.post(
        "/jobs/from-url",
        headers=headers,
        json={"url": f"{origin}/audio/short_en.ogg", "options": {"language": "en"}},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    job_id = uuid.UUID(job["id"])
    assert response.headers["location"] == f"http://gateway.test/jobs/{job_id}"
    assert job["sha256"] == hashlib.sha256(SHORT).hexdigest()
    assert job["size_bytes"] == len(SHORT)
    assert job["content_type"] == "audio/ogg"
    assert job["filename"] == "short_en.ogg"
    assert job["options"]["language"] == "en"
    assert job["state"] == "queued"
    row = await db.fetchrow("SELECT owner_id, sha256 FROM jobs WHERE id = $1", job_id)
    assert row["owner_id"] == USER
    assert row["sha256"] == job["sha256"]
    (_, event), *_ = await read_topic("audio.uploaded", job_id)
    assert event["sha256"] == job["sha256"]

    again = await client.post(
        "/jobs/from-url", headers=headers, json={"url": f"{origin}/audio/short_en.ogg"}
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == str(job_id)
    assert again.json()["duplicate"] is True


async def test_redirect_to_an_allowed_target_is_followed(client, headers, origin):
    response = await client.post(
        "/jobs/from-url",
        headers=headers,
        json={"url": f"{origin}/redirect?to=/audio/solar.ogg", "force": True},
    )
    assert response.status_code == 202, response.text
    assert response.json()["sha256"] == hashlib.sha256(SOLAR).hexdigest()
    assert response.json()["filename"] == "solar.ogg"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/big-declared", 413),
        ("/big-undeclared", 413),
        ("/notes.wav", 415),
        ("/slow.ogg", 504),
        ("/missing.ogg", 502),
        ("/loop", 502),
    ],
)
async def test_refused_downloads_leave_no_blob_or_job(
    client, headers, origin, db, blob_root, path, status
):
    files, jobs = blob_files(blob_root), await job_count(db)
    started = time.monotonic()
    response = await client.post("/jobs/from-url", headers=headers, json={"url": origin + path})
    assert_problem(response, status)
    if status == 504:
        assert time.monotonic() - started < 10
    assert blob_files(blob_root) == files
    assert await job_count(db) == jobs


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("ftp://127.0.0.1/a.ogg", 400),
        ("file:///etc/passwd", 400),
        ("http:///nohost", 400),
        ("http://user:secret@127.0.0.1/a.ogg", 400),
        ("not a url", 400),
        # Loopback outside the allowed 127.0.0.1/32, and what else a server must not reach.
        ("http://127.0.0.2:9/a.ogg", 403),
        ("http://[::1]:9/a.ogg", 403),
        ("http://169.254.169.254/latest/meta-data", 403),
        ("http://10.1.2.3/a.ogg", 403),
        ("http://0.0.0.0:9/a.ogg", 403),
        ("http://224.0.0.1/a.ogg", 403),
        ("http://[::ffff:10.0.0.1]/a.ogg", 403),
    ],
)
async def test_bad_and_forbidden_urls(client, headers, db, url, status):
    jobs = await job_count(db)
    response = await client.post("/jobs/from-url", headers=headers, json={"url": url})
    assert_problem(response, status)
    assert await job_count(db) == jobs


async def test_a_url_of_another_scheme_is_refused_as_one_that_cannot_be_fetched(client, headers):
    response = await client.post(
        "/jobs/from-url", headers=headers, json={"url": "ftp://127.0.0.1/a.ogg"}
    )
    # Worded for a download (webhook registration says "called": test_webhooks.py).
    assert assert_problem(response, 400)["detail"] == "only http and https URLs can be fetched"


async def test_a_redirect_to_a_forbidden_target_is_refused(client, headers, origin, db):
    jobs = await job_count(db)
    for target in ("http://127.0.0.2:9/a.ogg", "http://169.254.169.254/latest/meta-data"):
        response = await client.post(
            "/jobs/from-url",
            headers=headers,
            json={"url": f"{origin}/redirect?to={target}"},
        )
        body = assert_problem(response, 403)
        assert target.split("/")[2].split(":")[0] in body["detail"]
    assert await job_count(db) == jobs


async def test_h2_compressed_response_is_refused_without_decoding_it(
    client, headers, origin, db, blob_root
):
    files, jobs = blob_files(blob_root), await job_count(db)
    assert len(gzip_bomb()) < 4096
    tracemalloc.start()
    try:
        response = await client.post(
            "/jobs/from-url", headers=headers, json={"url": f"{origin}/bomb.wav"}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    body = assert_problem(response, 502)
    assert "Content-Encoding: gzip" in body["detail"]
    # Decoding it would hold 64 MiB at once (httpx yields a decoded stream as one chunk).
    assert peak < 16 * 1024**2
    assert blob_files(blob_root) == files
    assert await job_count(db) == jobs


LOCAL_POLICY = netguard.FetchPolicy(
    max_bytes=1000,
    timeout_s=5,
    connect_timeout_s=5,
    resolve_timeout_s=5,
    max_redirects=0,
    max_url_chars=2048,
    allow_private=True,
    allowed_networks=(),
    user_agent="test",
)


async def test_h2_downloads_ask_for_the_identity_encoding(origin):
    async with netguard.fetch(f"{origin}/echo-encoding", LOCAL_POLICY) as fetched:
        received = b"".join([chunk async for chunk in fetched.chunks()])
    assert received == b"identity"


async def test_m3_downloads_ignore_proxies_from_the_environment(origin, monkeypatch):
    # A proxy would see (and could answer for) every hop, past the address checks.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with netguard.fetch(f"{origin}/echo-encoding", LOCAL_POLICY) as fetched:
        assert b"".join([chunk async for chunk in fetched.chunks()]) == b"identity"


@pytest.mark.parametrize("host", ["0177.0.0.1", "010.010.010.010"])
async def test_l8_octal_ipv4_host_is_a_bad_url_not_a_500(client, headers, db, host):
    # The resolver reads 0177.0.0.1 as 127.0.0.1 (allowed here); the HTTP client refuses it.
    jobs = await job_count(db)
    response = await client.post(
        "/jobs/from-url", headers=headers, json={"url": f"http://{host}/a.ogg"}
    )
    body = assert_problem(response, 400)
    assert "not a valid URL" in body["detail"]
    assert await job_count(db) == jobs


async def test_l8_each_lookup_has_its_own_timeout():
    # 0 expires at the first await: no clock involved.
    policy = dataclasses.replace(LOCAL_POLICY, timeout_s=60, resolve_timeout_s=0)
    with pytest.raises(netguard.UpstreamError, match="cannot resolve localhost within 0 s"):
        async with netguard.fetch("http://localhost:9/a.ogg", policy):
            pass


async def test_loopback_is_refused_without_the_allow_list(start_gateway, token, origin):
    async with start_gateway() as default_gateway:
        response = await default_gateway.post(
            "/jobs/from-url",
            headers=token(USER),
            json={"url": f"{origin}/audio/short_en.ogg"},
        )
    assert_problem(response, 403)


async def test_needs_a_token(client, origin):
    response = await client.post("/jobs/from-url", json={"url": f"{origin}/audio/short_en.ogg"})
    assert_problem(response, 401)


# ---- the policy, without I/O ----


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_public_addresses_pass_and_every_address_is_checked() -> None:
    check_addresses("example.org", [ip("93.184.215.14"), ip("2606:2800:21f:cb07::1")], False, [])
    with pytest.raises(ForbiddenTarget):
        check_addresses("mixed.example", [ip("93.184.215.14"), ip("127.0.0.1")], False, [])
    with pytest.raises(ForbiddenTarget):
        check_addresses("nothing.example", [], True, [])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::",
        "::ffff:127.0.0.1",
    ],
)
def test_non_public_addresses_are_refused_unless_allowed(address: str) -> None:
    with pytest.raises(ForbiddenTarget):
        check_addresses("h", [ip(address)], False, [])
    check_addresses("h", [ip(address)], True, [])
    check_addresses("h", [ip(address)], False, parse_networks(["0.0.0.0/0", "::/0"]))


@pytest.mark.parametrize("address", ["2002:a00:1::1", "2002:7f00:1::", "fec0::1"])
def test_l8_6to4_and_site_local_ipv6_are_not_public(address: str) -> None:
    assert not netguard.is_public(ip(address))
    with pytest.raises(ForbiddenTarget):
        check_addresses("h", [ip(address)], False, [])


def test_l8_refusal_names_the_host_but_not_what_it_resolves_to() -> None:
    with pytest.raises(ForbiddenTarget) as refused:
        check_addresses("intranet.example", [ip("93.184.215.14"), ip("10.20.30.40")], False, [])
    assert "intranet.example" in str(refused.value)
    assert "10.20.30.40" not in str(refused.value)


def test_l8_the_pinned_request_is_built_from_the_checked_address_only() -> None:
    target = parse_target("http://media.example:8080/a%20b.ogg?x=1#frag", 2048, purpose="download")
    request = netguard.pinned_request(
        httpx.AsyncClient(), "GET", target, ip("93.184.215.14"), {"User-Agent": "t"}
    )
    assert str(request.url) == "http://93.184.215.14:8080/a%20b.ogg?x=1"
    assert request.headers["host"] == "media.example:8080"


def test_url_rules() -> None:
    target = parse_target("HTTPS://Example.org/a%20b.mp3?x=1", 2048, purpose="download")
    assert (target.scheme, target.host, target.port) == ("https", "example.org", 443)
    assert target.path_and_query == "/a%20b.mp3?x=1"
    assert parse_target("http://[::1]:8080/", 2048, purpose="download").port == 8080
    for bad in ("gopher://x/", "http://x:99999/", "http://x/" + "a" * 3000, "//x/a"):
        with pytest.raises(BadUrl):
            parse_target(bad, 2048, purpose="download")
    assert filename_from_url("http://x/dir/Talk%20one.mp3?dl=1") == "Talk one.mp3"
    assert filename_from_url("http://x/") is None
