"""Pure rules of URL ingest: which URLs and which addresses may be fetched."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class BadUrl(ValueError):
    """Not an http(s) URL we can fetch. The message is safe to show."""


class ForbiddenTarget(ValueError):
    """The URL's host resolves to an address the policy refuses."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path_and_query: str


def parse_url(url: str, max_chars: int) -> Target:
    if len(url) > max_chars:
        raise BadUrl(f"the URL is longer than {max_chars} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BadUrl(f"not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadUrl("only http and https URLs can be ingested")
    host = parts.hostname
    if not host:
        raise BadUrl("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise BadUrl("URLs with credentials are not accepted")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url.strip()):
        raise BadUrl("the URL contains whitespace or control characters")
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


def parse_networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not private, loopback, link-local, multicast, reserved,
    unspecified or shared (CGNAT) space. IPv4-mapped IPv6 is judged as the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast and not address.is_reserved


def check_addresses(
    host: str,
    addresses: Sequence[IPAddress],
    allow_private: bool,
    allowed_networks: Sequence[IPNetwork],
) -> None:
    """Every address the host resolves to must be allowed (an attacker's DNS may return a
    public and a private address and let the connection pick)."""
    if not addresses:
        raise ForbiddenTarget(f"{host} does not resolve to any address")
    for address in addresses:
        if any(address in network for network in allowed_networks):
            continue
        if allow_private or is_public(address):
            continue
        raise ForbiddenTarget(f"{host} resolves to {address}, which is not a public address")


def filename_from_url(url: str) -> str | None:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name or None
