"""URL ingest: download audio from an http(s) URL into the blob store (size and time
limited, every hop's target checked), then create the job exactly as an upload does."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx
from mxw_shared import netguard
from mxw_shared.blobs import BlobTooLarge, LocalBlobStore, StoredBlob
from mxw_shared.db import Pool
from mxw_shared.problems import Problem

from mxw_gateway import __name__ as _package
from mxw_gateway.auth import CurrentUser
from mxw_gateway.ingest.domain import (
    REDIRECT_STATUSES,
    BadUrl,
    ForbiddenTarget,
    IPAddress,
    Target,
    check_addresses,
    filename_from_url,
    parse_networks,
    parse_url,
)
from mxw_gateway.ingest.schemas import FromUrlRequest
from mxw_gateway.jobs import service as jobs
from mxw_gateway.jobs.domain import NotAudio, probe_audio, sanitize_filename
from mxw_gateway.settings import GatewaySettings

USER_AGENT = f"mxwhisper-{_package}/1.0"


@dataclass(frozen=True)
class Downloaded:
    blob: StoredBlob
    final_url: str


async def resolve(target: Target) -> list[IPAddress]:
    try:
        return await netguard.resolve(target.host, target.port)
    except (socket.gaierror, UnicodeError) as exc:
        raise Problem(502, "Upstream failure", f"cannot resolve {target.host}") from exc


def _pinned_request(client: httpx.AsyncClient, target: Target, address: IPAddress) -> httpx.Request:
    """A GET to the checked address itself, so a second DNS answer cannot redirect the
    connection elsewhere; Host and TLS SNI (hence certificate checks) keep the name."""
    url = httpx.URL(target.url).copy_with(host=str(address))
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    if ":" in target.host:
        host_header = f"[{target.host}]" + (
            "" if target.port == default_port else f":{target.port}"
        )
    return client.build_request(
        "GET",
        url,
        headers={"Host": host_header, "User-Agent": USER_AGENT, "Accept": "audio/*, */*;q=0.1"},
        extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
    )


async def download(settings: GatewaySettings, store: LocalBlobStore, url: str) -> Downloaded:
    limit = settings.ingest_max_bytes or settings.max_upload_bytes
    networks = parse_networks(settings.ingest_allowed_networks)
    timeout = httpx.Timeout(settings.ingest_timeout_s, connect=settings.ingest_connect_timeout_s)
    try:
        async with (
            asyncio.timeout(settings.ingest_timeout_s),
            httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client,
        ):
            for _ in range(settings.ingest_max_redirects + 1):
                target = parse_url(url, settings.ingest_max_url_chars)
                addresses = await resolve(target)
                check_addresses(target.host, addresses, settings.ingest_allow_private, networks)
                request = _pinned_request(client, target, addresses[0])
                response = await client.send(request, stream=True)
                try:
                    if response.status_code in REDIRECT_STATUSES:
                        location = response.headers.get("location")
                        if not location:
                            raise Problem(
                                502, "Upstream failure", "redirect without a Location header"
                            )
                        url = urljoin(target.url, location)
                        continue
                    if response.status_code >= 400:
                        raise Problem(
                            502,
                            "Upstream failure",
                            f"the server answered {response.status_code}",
                            upstream_status=response.status_code,
                        )
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > limit:
                        raise BlobTooLarge(limit)
                    blob = await store.put_stream(response.aiter_bytes(), limit)
                    return Downloaded(blob=blob, final_url=target.url)
                finally:
                    await response.aclose()
            raise Problem(
                502,
                "Upstream failure",
                f"more than {settings.ingest_max_redirects} redirects",
            )
    except BadUrl as exc:
        raise Problem(400, "Bad URL", str(exc)) from exc
    except ForbiddenTarget as exc:
        raise Problem(403, "Forbidden target", str(exc)) from exc
    except BlobTooLarge as exc:
        raise Problem(
            413,
            "Download too large",
            f"the file exceeds the limit of {exc.limit} bytes",
            limit=exc.limit,
        ) from exc
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise Problem(
            504,
            "Upstream timeout",
            f"the download did not finish within {settings.ingest_timeout_s:g} s",
        ) from exc
    except httpx.HTTPError as exc:
        raise Problem(
            502, "Upstream failure", f"the download failed: {type(exc).__name__}"
        ) from exc


async def ingest(
    request: FromUrlRequest,
    *,
    user: CurrentUser,
    settings: GatewaySettings,
    pool: Pool,
    store: LocalBlobStore,
) -> jobs.UploadResult:
    downloaded = await download(settings, store, request.url)
    blob = downloaded.blob
    try:
        if blob.size_bytes == 0:
            raise Problem(415, "Unsupported media type", "the downloaded file is empty")
        try:
            info = await asyncio.to_thread(probe_audio, blob.path)
        except NotAudio as exc:
            raise Problem(415, "Unsupported media type", str(exc)) from exc
        filename = sanitize_filename(
            request.filename or filename_from_url(downloaded.final_url),
            settings.max_filename_chars,
        )
        job_id, created = await jobs._create_job(
            pool, settings, user, blob, info.content_type, filename, request.options, request.force
        )
    except BaseException:
        await jobs.discard_unreferenced(pool, store, blob)
        raise
    view = await jobs.get_job(pool, settings, user, job_id)
    if not created:
        view = view.model_copy(update={"duplicate": True})
    return jobs.UploadResult(job=view, created=created)
