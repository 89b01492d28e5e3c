"""Search use case: the query vector from the embedder, then hybrid SQL, then links."""

from __future__ import annotations

import uuid

import httpx
from mxw_shared.db import Pool
from mxw_shared.logging import get_logger
from mxw_shared.problems import Problem

from mxw_gateway.auth import CurrentUser
from mxw_gateway.search import repository
from mxw_gateway.search.schemas import SearchHit, SearchResults
from mxw_gateway.settings import GatewaySettings

log = get_logger(__name__)


async def embed_query(
    client: httpx.AsyncClient, settings: GatewaySettings, text: str
) -> list[float]:
    """One vector from the embedder's OpenAI-compatible /v1/embeddings."""
    headers = {}
    if settings.embedder_service_token is not None:
        headers["Authorization"] = f"Bearer {settings.embedder_service_token.get_secret_value()}"
    try:
        response = await client.post(
            "/v1/embeddings",
            json={"input": [text], "model": settings.embedder_model},
            headers=headers,
        )
    except httpx.HTTPError as exc:
        log.warning("embedder unreachable", error=repr(exc))
        raise Problem(503, "Search unavailable", "the embedding service is unreachable") from exc
    if response.status_code != 200:
        log.warning("embedder error", status=response.status_code, body=response.text[:500])
        raise Problem(
            503, "Search unavailable", f"the embedding service answered {response.status_code}"
        )
    try:
        vector = [float(x) for x in response.json()["data"][0]["embedding"]]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise Problem(502, "Bad gateway", "the embedding service sent an unusable answer") from exc
    if len(vector) != settings.embedding_dimensions:
        raise Problem(
            502,
            "Bad gateway",
            f"the embedding service sent {len(vector)} dimensions, "
            f"expected {settings.embedding_dimensions}",
        )
    return vector


async def search(
    *,
    pool: Pool,
    client: httpx.AsyncClient,
    settings: GatewaySettings,
    user: CurrentUser,
    q: str,
    limit: int | None,
    all_users: bool,
    job_id: uuid.UUID | None,
) -> SearchResults:
    if all_users and not user.is_admin:
        raise Problem(403, "Forbidden", "only admins may search every user's audio")
    query = q.strip()
    if not query:
        raise Problem(422, "Invalid request", "q must not be blank")
    size = min(limit or settings.search_default_limit, settings.search_max_limit)
    vector = await embed_query(client, settings, query)
    rows = await repository.hybrid_search(
        pool,
        query_text=query,
        query_vector=vector,
        owner_id=None if all_users else user.sub,
        job_id=job_id,
        candidates=max(
            size * settings.search_candidates_per_result, settings.search_min_candidates
        ),
        limit=size,
        rrf_k=settings.search_rrf_k,
        ef_search=settings.search_hnsw_ef_search,
    )
    base = settings.public_base_url.rstrip("/")
    return SearchResults(
        query=query,
        results=[
            SearchHit(
                job_id=r["job_id"],
                filename=r["filename"],
                chunk_id=r["chunk_id"],
                chunk_index=r["idx"],
                text=r["text"],
                topic=r["topic"],
                keywords=list(r["keywords"]),
                start_s=r["start_s"],
                end_s=r["end_s"],
                score=round(float(r["score"]), 6),
                vector_rank=r["vector_rank"],
                text_rank=r["text_rank"],
                audio_url=f"{base}/jobs/{r['job_id']}/audio#t={_seconds(r['start_s'])}",
            )
            for r in rows
        ],
    )


def _seconds(value: float) -> str:
    """Media-fragment time: whole seconds without a trailing '.0', else 3 decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")
