"""Search use cases: the query vector from the embedder, then the search SQL, then links."""

from __future__ import annotations

import base64
import datetime as dt
import re
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
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
    SegmentMatch,
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

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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
    client: httpx.AsyncClient,
    settings: GatewaySettings,
    *,
    mode: SearchMode,
    query: str,
    vector: list[float] | None,
    scope: Scope,
    size: int,
    offset: int,
    owner: str,
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
    filtered = scope.speaker is not None or scope.voice is not None
    hits, allowed = [], []
    for r in page:
        said, voices, kept = [], [], []
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
            kept.append(ln.segment_idx)
        names_in_chunk = list(dict.fromkeys(ln.name for ln in said))
        keep = [True] * len(said)
        if scope.voice is not None:
            keep = [k and voice == scope.voice for k, voice in zip(keep, voices, strict=True)]
        if scope.speaker is not None:
            wanted = scope.speaker.lower()
            keep = [k and ln.name.lower() == wanted for k, ln in zip(keep, said, strict=True)]
        starts: dict[int, float] = {}
        for line, idx, k in zip(said, kept, keep, strict=True):
            if k:
                starts.setdefault(idx, line.start_s)
        said = [ln for ln, k in zip(said, keep, strict=True) if k]
        allowed.append(starts if filtered else None)
        hits.append(_hit(settings, r, names_in_chunk, said))
    segments = await repository.chunk_segments(pool, page, query)
    hits = await land_on_segments(
        pool,
        client,
        settings,
        hits,
        [segments.get(r["chunk_id"], []) for r in page],
        allowed,
        query,
        vector,
        owner=owner,
    )
    return hits, next_offset


# Most segment texts embedded per search to rank a page's segments by meaning (a default
# page of 10 chunks holds ~50-300); the hits past that budget are ranked by words alone.
MAX_LANDING_SEGMENTS = 256
SEGMENTS_PER_HIT = 3
# Weight of words against meaning in a segment's score: measured in bench/landing_bench.py
# (docs/benchmarks.md, "Landing on the sentence").
LEXICAL_WEIGHT = 0.25
# Recent segment vectors (per user, like the query vectors): the next page or a refined
# query over the same recordings embeds only what it has not seen.
SEGMENT_VECTORS = QueryVectorCache(capacity=8192)


@dataclass(frozen=True)
class Landing:
    """How a hit's segments are ranked (the bench varies them; the service uses the defaults)."""

    lexical_weight: float = LEXICAL_WEIGHT
    max_embedded: int = MAX_LANDING_SEGMENTS
    on_word: bool = False  # land on the first matched word's start when its time is known


LANDING = Landing()


async def embed_segments(
    client: httpx.AsyncClient, settings: GatewaySettings, texts: list[str], owner: str
) -> list[list[float]]:
    """Vectors of segment texts, the ones not cached embedded in one call."""
    keys = [(settings.embedder_url, settings.embedder_model, owner, t) for t in texts]
    found = [SEGMENT_VECTORS.get(k) for k in keys]
    missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
    if missing:
        fresh = dict(zip(missing, await embed_texts(client, settings, missing), strict=True))
        for key in keys:
            if key[3] in fresh:
                SEGMENT_VECTORS.put(key, fresh[key[3]])
        found = [v if v is not None else fresh[t] for t, v in zip(texts, found, strict=True)]
    return [v for v in found if v is not None]


def segment_scores(
    semantic: list[float] | None, lexical: list[float], overlap: list[float], weight: float
) -> list[float]:
    """The one landing rule: meaning (cosine to the query) and words (ts_rank relative to the
    chunk's best segment; plain word overlap when the query has no text-search words)
    fused as (1 - weight) x meaning + weight x words. Without a query vector (text mode, a
    page past the embedding budget), words alone; without query words (more like this),
    meaning alone."""
    top = max(lexical, default=0.0)
    words = [x / top for x in lexical] if top > 0 else []
    if not words:
        most = max(overlap, default=0.0)
        words = [x / most for x in overlap] if most > 0 else [0.0] * len(lexical)
    if semantic is None:
        return words
    if not any(words):
        return semantic
    return [(1 - weight) * m + weight * w for m, w in zip(semantic, words, strict=True)]


def first_marked_word(highlight: str, text: str, words: Any) -> float | None:
    """The start of the first word ts_headline marked, when the stored words still spell the
    stored text (a corrected text without new word times lands on the segment)."""
    if not isinstance(words, list) or not words or "<mark>" not in highlight:
        return None
    try:
        spelled = [(str(w["word"]), float(w["start"])) for w in words]
    except (KeyError, TypeError, ValueError):
        return None
    if "".join(w for w, _ in spelled).strip() != text.strip():
        return None
    at = highlight.index("<mark>")  # the same offset in the text: no mark before it
    offset = len("".join(w for w, _ in spelled)) - len("".join(w for w, _ in spelled).lstrip())
    pos = at + offset
    for word, start in spelled:
        if pos < len(word):
            return start
        pos -= len(word)
    return None


async def land_on_segments(
    pool: Pool,
    client: httpx.AsyncClient,
    settings: GatewaySettings,
    hits: list[SearchHit],
    segments: list[list[asyncpg.Record]],
    allowed: list[dict[int, float] | None],
    query: str,
    vector: list[float] | None,
    *,
    owner: str,
    landing: Landing | None = None,
) -> list[SearchHit]:
    """Each hit's best segments (`segment_scores`, up to SEGMENTS_PER_HIT) and its audio link
    moved to the best one's start (with a speaker filter, to their line in it). Every
    search lands by this rule: hybrid and vector by meaning and words, text by words,
    more like this (no query text, the chunk's vector) by meaning."""
    landing = landing or LANDING
    candidates = []
    for rows, starts in zip(segments, allowed, strict=True):
        rows = [r for r in rows if r["text"].strip()]
        candidates.append([r for r in rows if starts is None or r["idx"] in starts])
    semantic: list[list[float] | None] = [None] * len(hits)
    if vector is not None:
        budget = landing.max_embedded
        texts: list[str] = []
        embedded: list[int] = []
        for n, rows in enumerate(candidates):
            if rows and len(rows) <= budget:
                budget -= len(rows)
                texts.extend(r["text"].strip() for r in rows)
                embedded.append(n)
        vectors: list[list[float]] = []
        if texts:
            try:
                vectors = await embed_segments(client, settings, texts, owner)
            except Problem as exc:  # the hits stand; they land by words (or on their start)
                log.warning("segments not embedded: landing by words", detail=exc.detail)
        if vectors:
            query_unit = np.asarray(vector) / (np.linalg.norm(vector) or 1.0)
            matrix = np.asarray(vectors, dtype=np.float64)
            matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-9
            cosines = [float(x) for x in matrix @ query_unit]
            at = 0
            for n in embedded:
                semantic[n] = cosines[at : at + len(candidates[n])]
                at += len(candidates[n])
    wanted = set(_WORD.findall(query.lower()))
    chosen: list[list[tuple[asyncpg.Record, float]]] = []
    for n, rows in enumerate(candidates):
        scores = segment_scores(
            semantic[n],
            [float(r["lexical"]) for r in rows],
            [float(len(wanted & set(_WORD.findall(r["text"].lower())))) for r in rows],
            landing.lexical_weight,
        )
        order = sorted(range(len(rows)), key=lambda i: (-scores[i], i))[:SEGMENTS_PER_HIT]
        chosen.append([(rows[i], scores[i]) for i in order])
    marked = (
        await repository.headlines(pool, [r["text"] for best in chosen for r, _ in best], query)
        if query
        else []
    )
    out, at = [], 0
    for hit, best, starts in zip(hits, chosen, allowed, strict=True):
        shown = marked[at : at + len(best)] if query else [None] * len(best)
        at += len(best) if query else 0
        matches = [
            SegmentMatch(
                index=r["idx"],
                start_s=r["start_s"],
                end_s=r["end_s"],
                text=r["text"],
                highlight=h,
                score=round(score, 6),
            )
            for (r, score), h in zip(best, shown, strict=True)
        ]
        update: dict[str, Any] = {"segments": matches}
        if best:
            top, _ = best[0]
            land = float(top["start_s"]) if starts is None else starts[top["idx"]]
            if landing.on_word and shown and shown[0] is not None and starts is None:
                word = first_marked_word(shown[0], top["text"], top["words"])
                land = word if word is not None else land
            update["audio_url"] = _audio_url(settings, hit.job_id, land)
        out.append(hit.model_copy(update=update))
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
            client,
            settings,
            mode=mode,
            query=query,
            vector=vector,
            scope=scope,
            size=size,
            offset=offset,
            owner=user.sub,
        )
    return SearchResults(
        query=query, mode=mode, offset=offset, limit=size, next_offset=next_offset, results=hits
    )


async def similar(
    *,
    pool: Pool,
    client: httpx.AsyncClient,
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
        client,
        settings,
        mode=SearchMode.vector,
        query="",
        vector=[float(x) for x in source["embedding"].to_list()],
        scope=scope,
        size=size,
        offset=offset,
        owner=user.sub,
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
        segments=[],
        audio_url=_audio_url(settings, r["job_id"], r["start_s"]),
    )


def _audio_url(settings: GatewaySettings, job_id: uuid.UUID, start_s: float) -> str:
    """Plays the job's audio from `start_s`."""
    base = settings.public_base_url.rstrip("/")
    return f"{base}/jobs/{job_id}/audio#t={_seconds(start_s)}"


def _seconds(value: float) -> str:
    """Media-fragment time: whole seconds without a trailing '.0', else 3 decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")
