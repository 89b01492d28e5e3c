"""Pure rules of URL ingest: which URLs and which addresses may be fetched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mxw_shared.netguard import IPAddress, IPNetwork, parse_networks, refusal

__all__ = ["IPAddress", "IPNetwork", "parse_networks"]  # re-exported for the callers here

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


def filename_from_url(url: str) -> str | None:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name or None
