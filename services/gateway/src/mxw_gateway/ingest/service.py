"""URL ingest: download audio from an http(s) URL into the blob store (size and time
limited, every hop's target checked), then create the job exactly as an upload does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mxw_shared import netguard
from mxw_shared.blobs import BlobStore, BlobTooLarge, StoredBlob
from mxw_shared.db import Pool
from mxw_shared.problems import Problem

from mxw_gateway import __name__ as _package
from mxw_gateway.auth import CurrentUser
from mxw_gateway.ingest.domain import filename_from_url
from mxw_gateway.ingest.schemas import FromUrlRequest
from mxw_gateway.jobs.admission import UploadResult, admit, check_model, upload_result
from mxw_gateway.settings import GatewaySettings
from mxw_gateway.vocabulary.service import effective_options

USER_AGENT = f"mxwhisper-{_package}/1.0"


@dataclass(frozen=True)
class Downloaded:
    blob: StoredBlob
    final_url: str


def fetch_policy(settings: GatewaySettings) -> netguard.FetchPolicy:
    return netguard.FetchPolicy(
        max_bytes=settings.ingest_max_bytes or settings.max_upload_bytes,
        timeout_s=settings.ingest_timeout_s,
        connect_timeout_s=settings.ingest_connect_timeout_s,
        resolve_timeout_s=settings.ingest_resolve_timeout_s,
        max_redirects=settings.ingest_max_redirects,
        max_url_chars=settings.ingest_max_url_chars,
        allow_private=settings.ingest_allow_private,
        allowed_networks=tuple(netguard.parse_networks(settings.ingest_allowed_networks)),
        user_agent=USER_AGENT,
    )


async def download(settings: GatewaySettings, store: BlobStore, url: str) -> Downloaded:
    policy = fetch_policy(settings)
    try:
        async with netguard.fetch(url, policy) as fetched:
            blob = await store.put_stream(fetched.chunks(), policy.max_bytes)
            return Downloaded(blob=blob, final_url=fetched.url)
    except netguard.BadUrl as exc:
        raise Problem(400, "Bad URL", str(exc)) from exc
    except netguard.ForbiddenTarget as exc:
        raise Problem(403, "Forbidden target", str(exc)) from exc
    except BlobTooLarge as exc:
        raise Problem(
            413,
            "Download too large",
            f"the file exceeds the limit of {exc.limit} bytes",
            limit=exc.limit,
        ) from exc
    except TimeoutError as exc:
        raise Problem(
            504,
            "Upstream timeout",
            f"the download did not finish within {settings.ingest_timeout_s:g} s",
        ) from exc
    except netguard.UpstreamError as exc:
        extra: dict[str, Any] = {} if exc.status is None else {"upstream_status": exc.status}
        raise Problem(502, "Upstream failure", str(exc), **extra) from exc


async def ingest(
    request: FromUrlRequest,
    *,
    user: CurrentUser,
    settings: GatewaySettings,
    pool: Pool,
    store: BlobStore,
) -> UploadResult:
    check_model(request.options, settings)
    # Before the download: a vocabulary merge beyond its limits fetches nothing.
    options = await effective_options(
        pool, user, request.options, use_vocabulary=request.use_vocabulary
    )
    downloaded = await download(settings, store, request.url)
    admitted = await admit(
        downloaded.blob,
        request.filename or filename_from_url(downloaded.final_url),
        options,
        force=request.force,
        user=user,
        settings=settings,
        pool=pool,
        store=store,
        empty_file=Problem(415, "Unsupported media type", "the downloaded file is empty"),
    )
    return await upload_result(pool, settings, user, admitted)
