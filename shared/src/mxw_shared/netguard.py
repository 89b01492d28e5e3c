"""Outbound requests to hosts that users or events choose (URL ingest in the gateway, http(s)
audio in the transcriber, webhooks in the notifier): parsing the URL, resolving the host,
refusing addresses inside our own network (SSRF), and the one guarded download.

Callers connect to an address returned here, never to the name again, so a second DNS
answer cannot move the connection somewhere else after the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urljoin, urlsplit

import httpx

from mxw_shared.blobs import BlobTooLarge

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Global by Python's tables, but not for us: 6to4 embeds any IPv4 address (2002:0a00:0001::
# is 10.0.0.1 behind a relay) and the deprecated site-local block is routed internally.
_NOT_PUBLIC = (ipaddress.ip_network("2002::/16"), ipaddress.ip_network("fec0::/10"))


class BadUrl(ValueError):
    """Not an http(s) URL we can fetch or call. The message is safe to show."""


class ForbiddenTarget(ValueError):
    """The URL's host resolves to an address the policy refuses. The message is safe to show:
    it names the host, never what it resolves to."""


class UpstreamError(Exception):
    """The server or the connection failed. The message is safe to show to whoever chose the
    URL; `retriable` says whether trying again later may help (5xx, network errors)."""

    def __init__(self, message: str, *, status: int | None = None, retriable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = retriable


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path_and_query: str


def parse_networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not private, loopback, link-local, multicast, reserved,
    unspecified, shared (CGNAT), 6to4 or site-local space. IPv4-mapped IPv6 is judged as the
    IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif any(address in network for network in _NOT_PUBLIC):
            return False
    return address.is_global and not address.is_multicast and not address.is_reserved


def refusal(
    host: str,
    addresses: Sequence[IPAddress],
    allow_private: bool,
    allowed_networks: Sequence[IPNetwork],
) -> str | None:
    """Why `host` may not be called, or None. Every address it resolves to must be allowed
    (an attacker's DNS may answer a public and a private one and let the connection pick).
    The reason never names the address: it would tell callers what internal names resolve
    to."""
    if not addresses:
        return f"{host} does not resolve to any address"
    for address in addresses:
        if any(address in network for network in allowed_networks):
            continue
        if allow_private or is_public(address):
            continue
        return f"{host} is not a public address"
    return None


def check_addresses(
    host: str,
    addresses: Sequence[IPAddress],
    allow_private: bool,
    allowed_networks: Sequence[IPNetwork],
) -> None:
    """Raises ForbiddenTarget unless every address `host` resolves to is allowed."""
    refused = refusal(host, addresses, allow_private, allowed_networks)
    if refused is not None:
        raise ForbiddenTarget(refused)


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The distinct addresses of `host`, in resolver order. Raises OSError (socket.gaierror)
    or UnicodeError when it cannot be resolved."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])  # no IPv6 zone id
        if address not in addresses:
            addresses.append(address)
    return addresses


# What a URL is for, and so how a refusal words it: a download is fetched (URL ingest, the
# transcriber's http(s) audio), a webhook endpoint is called (registration, delivery).
Purpose = Literal["download", "webhook"]
_VERB: dict[Purpose, str] = {"download": "fetched", "webhook": "called"}


def parse_target(url: str, max_chars: int, *, purpose: Purpose) -> Target:
    """The URL as a Target, or BadUrl saying why not (worded for `purpose`): http(s), a
    host, no credentials, no whitespace or control characters, read as the HTTP client
    reads it. Nothing is resolved here."""
    if len(url) > max_chars:
        raise BadUrl(f"the URL is longer than {max_chars} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BadUrl(f"not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadUrl(f"only http and https URLs can be {_VERB[purpose]}")
    host = parts.hostname
    if not host:
        raise BadUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise BadUrl("URLs with credentials are not accepted")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url.strip()):
        raise BadUrl("the URL contains whitespace or control characters")
    try:
        # The HTTP client must read the URL as we do: it refuses e.g. the octal IPv4 host
        # 0177.0.0.1, which the resolver reads as 127.0.0.1.
        httpx.URL(url.strip())
    except httpx.InvalidURL as exc:
        raise BadUrl(f"not a valid URL: {exc}") from exc
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        url=url.strip(),
        scheme=scheme,
        host=host,
        port=port or (443 if scheme == "https" else 80),
        path_and_query=path,
    )


def pinned_request(
    client: httpx.AsyncClient,
    method: str,
    target: Target,
    address: IPAddress,
    headers: dict[str, str],
    content: bytes | None = None,
) -> httpx.Request:
    """A request to the checked address itself, so a second DNS answer cannot send it
    elsewhere. The URL is built from the address, the port and the path only (nothing else
    of the original URL reaches the connection); Host and TLS SNI (hence certificate checks)
    keep the name."""
    try:
        raw_path = httpx.URL(target.url).raw_path
        url = httpx.URL(
            scheme=target.scheme, host=str(address), port=target.port, raw_path=raw_path
        )
    except httpx.InvalidURL as exc:
        raise BadUrl(f"not a valid URL: {exc}") from exc
    default_port = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    host_header = host if target.port == default_port else f"{host}:{target.port}"
    return client.build_request(
        method,
        url,
        content=content,
        headers={**headers, "Host": host_header},
        extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
    )


@dataclass(frozen=True)
class FetchPolicy:
    """Limits and target policy of one kind of download."""

    max_bytes: int
    timeout_s: float  # the whole download, every redirect included
    connect_timeout_s: float
    resolve_timeout_s: float  # each hop's DNS lookup
    max_redirects: int
    max_url_chars: int
    allow_private: bool
    allowed_networks: tuple[IPNetwork, ...]
    user_agent: str
    accept: str = "audio/*, */*;q=0.1"


@dataclass
class Fetched:
    """A response being downloaded: `url` is the last hop's."""

    url: str
    _response: httpx.Response
    _max_bytes: int

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as sent (no content decoding), each network chunk counted before it is
        handed on: BlobTooLarge as soon as the total passes the limit."""
        size = 0
        try:
            async for chunk in self._response.aiter_raw():
                size += len(chunk)
                if size > self._max_bytes:
                    raise BlobTooLarge(self._max_bytes)
                yield chunk
        except httpx.TimeoutException as exc:
            raise TimeoutError("the download stalled") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"the download failed: {type(exc).__name__}", retriable=True
            ) from exc


@contextlib.asynccontextmanager
async def fetch(url: str, policy: FetchPolicy) -> AsyncIterator[Fetched]:
    """GET `url`, following redirects by hand: each hop's URL parsed, its host resolved and
    every address checked, the connection pinned to a checked address; no proxies from the
    environment. Compressed responses are refused (a few KB of stacked gzip decode to
    gigabytes), so the byte limit holds for what is stored.

    Raises BadUrl, ForbiddenTarget, UpstreamError, BlobTooLarge (declared or counted) and
    TimeoutError (the whole download, body included, past `policy.timeout_s`)."""
    timeout = httpx.Timeout(policy.timeout_s, connect=policy.connect_timeout_s)
    headers = {
        "User-Agent": policy.user_agent,
        "Accept": policy.accept,
        "Accept-Encoding": "identity",
    }
    async with (
        asyncio.timeout(policy.timeout_s),
        httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client,
    ):
        for _ in range(policy.max_redirects + 1):
            target = parse_target(url, policy.max_url_chars, purpose="download")
            addresses = await _resolve(target, policy.resolve_timeout_s)
            check_addresses(target.host, addresses, policy.allow_private, policy.allowed_networks)
            request = pinned_request(client, "GET", target, addresses[0], headers)
            try:
                response = await client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise TimeoutError("the server did not answer in time") from exc
            except httpx.HTTPError as exc:
                raise UpstreamError(
                    f"the download failed: {type(exc).__name__}", retriable=True
                ) from exc
            try:
                if response.status_code in REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise UpstreamError("redirect without a Location header", retriable=False)
                    url = urljoin(target.url, location)
                    continue
                if response.status_code >= 400:
                    raise UpstreamError(
                        f"the server answered {response.status_code}",
                        status=response.status_code,
                        retriable=response.status_code >= 500,
                    )
                _check_identity(response)
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise BlobTooLarge(policy.max_bytes)
                yield Fetched(url=target.url, _response=response, _max_bytes=policy.max_bytes)
                return
            finally:
                await response.aclose()
        raise UpstreamError(f"more than {policy.max_redirects} redirects", retriable=False)


async def _resolve(target: Target, timeout_s: float) -> list[IPAddress]:
    try:
        async with asyncio.timeout(timeout_s):
            return await resolve(target.host, target.port)
    except TimeoutError as exc:
        raise UpstreamError(
            f"cannot resolve {target.host} within {timeout_s:g} s", retriable=True
        ) from exc
    except (OSError, UnicodeError) as exc:
        raise UpstreamError(f"cannot resolve {target.host}", retriable=True) from exc


def _check_identity(response: httpx.Response) -> None:
    codings = [
        c.strip().lower()
        for value in response.headers.get_list("content-encoding")
        for c in value.split(",")
        if c.strip()
    ]
    refused = [c for c in codings if c != "identity"]
    if refused:
        raise UpstreamError(
            f"the server sent a compressed response (Content-Encoding: {', '.join(refused)}); "
            "only uncompressed files are accepted",
            retriable=False,
        )
