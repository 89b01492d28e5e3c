"""Search use cases: the query vector from the embedder, then the search SQL, then links."""

from __future__ import annotations

import base64
import datetime as dt
import re
import threading
import uuid
from collections import OrderedDict
from typing import Any

import asyncpg
import httpx
import numpy as np
from mxw_shared.db import Pool
from mxw_shared.logging import get_logger
from mxw_shared.metrics import SEARCH_SECONDS
from mxw_shared.problems import Problem
from mxw_shared.speakers import default_name

from mxw_gateway.auth import CurrentUser
from mxw_gateway.search import repository
from mxw_gateway.search.repository import Scope, SearchMode, Tuning
from mxw_gateway.search.schemas import (
    MAX_OFFSET,
    SearchFilters,
    SearchHit,
    SearchResults,
    SpeakerLine,
)
from mxw_gateway.settings import GatewaySettings
from mxw_gateway.voices import repository as voices_repository
from mxw_gateway.voices.service import profile_not_found

log = get_logger(__name__)

# Tuples an iterative HNSW scan may visit before it gives up (pgvector's default is
# 20 000); a short answer then falls back to the exact scan of the caller's rows.
MAX_SCAN_TUPLES = 40_000
_WORD = re.compile(r"\w+")


class QueryVectorCache:
    """The most recent query vectors, least recently used out. A repeated query (the next
    page, a refresh, a re-run) skips the embedder round trip (~20 ms on an idle CPU). Keys
    include the user: a shared entry would let one user time whether another searched for
    a text. Vectors are kept as float32 bytes (1.5 KB each for 384 dimensions)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...]) -> list[float] | None:
        with self._lock:
            raw = self._entries.get(key)
            if raw is None:
                return None
            self._entries.move_to_end(key)
        return [float(x) for x in np.frombuffer(raw, dtype="<f4")]

    def put(self, key: tuple[str, ...], vector: list[float]) -> None:
        raw = np.asarray(vector, dtype="<f4").tobytes()
        with self._lock:
            self._entries[key] = raw
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


QUERY_VECTORS = QueryVectorCache(capacity=2048)


def decode_embedding(value: Any) -> list[float]:
    """An OpenAI embedding: a list of floats, or base64 of little-endian float32."""
    if isinstance(value, str):
        raw = base64.b64decode(value, validate=True)
        return [float(x) for x in np.frombuffer(raw, dtype="<f4")]
    return [float(x) for x in value]


async def embed_query(
    client: httpx.AsyncClient, settings: GatewaySettings, text: str, owner: str = ""
) -> list[float]:
    """One vector from the embedder's OpenAI-compatible /v1/embeddings (base64: a quarter
    of the bytes of a JSON float list, and no float parsing); recent ones from the cache."""
    key = (settings.embedder_url, settings.embedder_model, owner, text)
    cached = QUERY_VECTORS.get(key)
    if cached is not None:
        return cached
    vector = await _embed_query(client, settings, text)
    QUERY_VECTORS.put(key, vector)
    return vector


async def _embed_query(
    client: httpx.AsyncClient, settings: GatewaySettings, text: str
) -> list[float]:
    (vector,) = await embed_texts(client, settings, [text])
    return vector


async def embed_texts(
    client: httpx.AsyncClient, settings: GatewaySettings, texts: list[str]
) -> list[list[float]]:
    headers = {}
    if settings.embedder_service_token is not None:
        headers["Authorization"] = f"Bearer {settings.embedder_service_token.get_secret_value()}"
    try:
        response = await client.post(
            "/v1/embeddings",
            json={"input": texts, "model": settings.embedder_model, "encoding_format": "base64"},
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
        data = response.json()["data"]
        vectors = [decode_embedding(item["embedding"]) for item in data]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise Problem(502, "Bad gateway", "the embedding service sent an unusable answer") from exc
    if len(vectors) != len(texts):
        raise Problem(502, "Bad gateway", "the embedding service left texts out")
    for vector in vectors:
        if len(vector) != settings.embedding_dimensions:
            raise Problem(
                502,
                "Bad gateway",
                f"the embedding service sent {len(vector)} dimensions, "
                f"expected {settings.embedding_dimensions}",
            )
    return vectors


def _scope(
    user: CurrentUser,
    filters: SearchFilters,
    extra_job: uuid.UUID | None = None,
    exclude_chunk_id: int | None = None,
) -> Scope:
    if filters.all and not user.is_admin:
        raise Problem(403, "Forbidden", "only admins may search every user's audio")
    created_from, created_to = _utc(filters.created_from), _utc(filters.created_to)
    if created_from is not None and created_to is not None and created_from >= created_to:
        raise Problem(422, "Invalid request", "created_from must be before created_to")
    job_ids = list(dict.fromkeys([*filters.job_ids, *([extra_job] if extra_job else [])]))
    return Scope(
        owner_id=None if filters.all else user.sub,
        job_ids=tuple(job_ids),
        language=filters.language.strip() if filters.language else None,
        created_from=created_from,
        created_to=created_to,
        exclude_chunk_id=exclude_chunk_id,
        speaker=filters.speaker.strip() if filters.speaker else None,
        voice=filters.voice,
    )


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """A time without a zone is taken as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def _tuning(settings: GatewaySettings, size: int, offset: int) -> Tuning:
    return Tuning(
        # Each ranked list must reach past the page asked for.
        candidates=max(
            (offset + size) * settings.search_candidates_per_result,
            settings.search_min_candidates,
        ),
        rrf_k=settings.search_rrf_k,
        ef_search=settings.search_hnsw_ef_search,
        max_scan_tuples=MAX_SCAN_TUPLES,
    )


async def _page(
    pool: Pool,
    settings: GatewaySettings,
    *,
    mode: SearchMode,
    query: str,
    vector: list[float] | None,
    scope: Scope,
    size: int,
    offset: int,
) -> tuple[list[SearchHit], int | None]:
    # One row past the page tells whether there is a next one.
    rows = await repository.search(
        pool,
        mode=mode,
        query_text=query,
        query_vector=vector,
        scope=scope,
        tuning=_tuning(settings, size, offset),
        limit=size + 1,
        offset=offset,
    )
    next_offset = offset + size if len(rows) > size and offset + size <= MAX_OFFSET else None
    page = rows[:size]
    lines, speakers = await repository.speaker_lines(pool, page)
    hits = []
    for r in page:
        said, voices = [], []
        for ln in lines.get(r["chunk_id"], []):
            if ln.speaker is None:
                continue
            known = speakers.get((r["job_id"], ln.speaker))
            name = known["name"] if known is not None else None
            said.append(
                SpeakerLine(
                    start_s=ln.start_s,
                    end_s=ln.end_s,
                    text=ln.text,
                    speaker=ln.speaker,
                    name=name or default_name(ln.speaker),
                )
            )
            voices.append(known["profile_id"] if known is not None else None)
        names_in_chunk = list(dict.fromkeys(ln.name for ln in said))
        if scope.voice is not None:
            said = [ln for ln, voice in zip(said, voices, strict=True) if voice == scope.voice]
        if scope.speaker is not None:
            said = [ln for ln in said if ln.name.lower() == scope.speaker.lower()]
        hits.append(_hit(settings, r, names_in_chunk, said))
    return hits, next_offset


# Most lines embedded to find where in its chunk each hit of a speaker search lands.
MAX_LANDING_LINES = 64


async def land_on_best_lines(
    client: httpx.AsyncClient,
    settings: GatewaySettings,
    hits: list[SearchHit],
    query: str,
    vector: list[float] | None,
) -> list[SearchHit]:
    """Each hit's audio link moved to its line closest to the query in meaning (its words
    when there is no query vector, in text mode, or too many lines)."""
    lines = [ln.text for hit in hits for ln in hit.lines]
    if not lines:
        return hits
    scores: list[float] | None = None
    if vector is not None and len(lines) <= MAX_LANDING_LINES:
        query_unit = np.asarray(vector) / (np.linalg.norm(vector) or 1.0)
        embedded = np.asarray(await embed_texts(client, settings, lines))
        embedded /= np.linalg.norm(embedded, axis=1, keepdims=True) + 1e-9
        scores = [float(x) for x in embedded @ query_unit]
    else:
        wanted = set(_WORD.findall(query.lower()))
        scores = [float(len(wanted & set(_WORD.findall(text.lower())))) for text in lines]
    out, at = [], 0
    for hit in hits:
        mine = scores[at : at + len(hit.lines)]
        at += len(hit.lines)
        if not mine:
            out.append(hit)
            continue
        best = hit.lines[max(range(len(mine)), key=lambda i: (mine[i], -i))]
        out.append(
            hit.model_copy(update={"audio_url": _audio_url(settings, hit.job_id, best.start_s)})
        )
    return out


async def search(
    *,
    pool: Pool,
    client: httpx.AsyncClient,
    settings: GatewaySettings,
    user: CurrentUser,
    q: str,
    mode: SearchMode,
    limit: int | None,
    offset: int,
    filters: SearchFilters,
    job_id: uuid.UUID | None = None,
) -> SearchResults:
    scope = _scope(user, filters, extra_job=job_id)
    # Another user's profile is "not found", like one that does not exist.
    if (
        scope.voice is not None
        and scope.owner_id is not None
        and await voices_repository.fetch_profile(pool, scope.owner_id, scope.voice) is None
    ):
        raise profile_not_found(scope.voice)
    query = q.strip()
    if not query:
        raise Problem(422, "Invalid request", "q must not be blank")
    size = min(limit or settings.search_default_limit, settings.search_max_limit)
    with SEARCH_SECONDS.labels(mode.value).time():  # query embedding + database
        vector = (
            None
            if mode is SearchMode.text
            else await embed_query(client, settings, query, owner=user.sub)
        )
        hits, next_offset = await _page(
            pool,
            settings,
            mode=mode,
            query=query,
            vector=vector,
            scope=scope,
            size=size,
            offset=offset,
        )
        if scope.speaker is not None or scope.voice is not None:
            hits = await land_on_best_lines(client, settings, hits, query, vector)
    return SearchResults(
        query=query, mode=mode, offset=offset, limit=size, next_offset=next_offset, results=hits
    )


async def similar(
    *,
    pool: Pool,
    settings: GatewaySettings,
    user: CurrentUser,
    chunk_id: int,
    limit: int | None,
    offset: int,
    filters: SearchFilters,
) -> SearchResults:
    """More like this: the chunk's own vector as the query, the chunk itself left out."""
    scope = _scope(user, filters, exclude_chunk_id=chunk_id)
    source = await repository.chunk_source(pool, chunk_id)
    # Another user's chunk is "not found", like a chunk that does not exist.
    if source is None or (source["owner_id"] != user.sub and not user.is_admin):
        raise Problem(404, "Not found", f"no chunk {chunk_id}")
    if source["embedding"] is None:
        raise Problem(
            409, "Not embedded yet", f"chunk {chunk_id} has no vector yet; try again shortly"
        )
    size = min(limit or settings.search_default_limit, settings.search_max_limit)
    hits, next_offset = await _page(
        pool,
        settings,
        mode=SearchMode.vector,
        query="",
        vector=[float(x) for x in source["embedding"].to_list()],
        scope=scope,
        size=size,
        offset=offset,
    )
    return SearchResults(
        query=f"chunk:{chunk_id}",
        mode=SearchMode.vector,
        offset=offset,
        limit=size,
        next_offset=next_offset,
        results=hits,
    )


def _hit(
    settings: GatewaySettings,
    r: asyncpg.Record,
    speakers: list[str],
    lines: list[SpeakerLine],
) -> SearchHit:
    return SearchHit(
        job_id=r["job_id"],
        filename=r["filename"],
        language=r["language"],
        chunk_id=r["chunk_id"],
        chunk_index=r["idx"],
        text=r["text"],
        highlight=r["highlight"],
        title=r["title"],
        topic=r["topic"],
        keywords=list(r["keywords"]),
        start_s=r["start_s"],
        end_s=r["end_s"],
        score=round(float(r["score"]), 6),
        vector_rank=r["vector_rank"],
        text_rank=r["text_rank"],
        speakers=speakers,
        lines=lines,
        audio_url=_audio_url(settings, r["job_id"], r["start_s"]),
    )


def _audio_url(settings: GatewaySettings, job_id: uuid.UUID, start_s: float) -> str:
    """Plays the job's audio from `start_s`."""
    base = settings.public_base_url.rstrip("/")
    return f"{base}/jobs/{job_id}/audio#t={_seconds(start_s)}"


def _seconds(value: float) -> str:
    """Media-fragment time: whole seconds without a trailing '.0', else 3 decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")
