"""Pure rules of URL ingest not shared with other downloads (those live in
mxw_shared.netguard: URL parsing, the address policy, the guarded download)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit


def filename_from_url(url: str) -> str | None:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name or None
