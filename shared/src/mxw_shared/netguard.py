"""Outbound requests to hosts that users choose (URL ingest in the gateway, webhooks in the
notifier): resolving the host, and refusing addresses inside our own network (SSRF).

Callers connect to an address returned here, never to the name again, so a second DNS
answer cannot move the connection somewhere else after the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not private, loopback, link-local, multicast, reserved,
    unspecified or shared (CGNAT) space. IPv4-mapped IPv6 is judged as the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast and not address.is_reserved


def refusal(
    host: str,
    addresses: Sequence[IPAddress],
    allow_private: bool,
    allowed_networks: Sequence[IPNetwork],
) -> str | None:
    """Why `host` may not be called, or None. Every address it resolves to must be allowed
    (an attacker's DNS may answer a public and a private one and let the connection pick)."""
    if not addresses:
        return f"{host} does not resolve to any address"
    for address in addresses:
        if any(address in network for network in allowed_networks):
            continue
        if allow_private or is_public(address):
            continue
        return f"{host} resolves to {address}, which is not a public address"
    return None


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
