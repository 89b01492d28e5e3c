"""Search SQL: pgvector nearest neighbours (HNSW) and Postgres full-text (GIN), alone or
fused by reciprocal rank, always scoped to an owner unless an admin asked for everything.

How owner and job filters keep every row under HNSW (measured in bench/search_bench.py,
figures in docs/benchmarks.md): the vector scan runs with pgvector's iterative index scan
(`hnsw.iterative_scan = relaxed_order`), so a filtered scan keeps walking the graph until
it has the candidates it was asked for instead of stopping at `ef_search` tuples. An
iterative scan still gives up after `hnsw.max_scan_tuples`; for a caller who owns a tiny
fraction of a large table that can be before enough of their rows were met, so when the
index scan comes back short the same query runs exactly (the caller's rows through the
owner/job b-tree, sorted by distance) — cheap precisely because the scope is small.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg
from mxw_shared.db import Pool
from mxw_shared.speakers import Line, Turn, Turns, attribute_all, lines_in


class SearchMode(StrEnum):
    hybrid = "hybrid"
    vector = "vector"
    text = "text"


@dataclass(frozen=True)
class Scope:
    """Which chunks a search may see. `owner_id` None: every user's (admins only)."""

    owner_id: str | None
    job_ids: tuple[uuid.UUID, ...] = ()
    language: str | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    exclude_chunk_id: int | None = None
    speaker: str | None = None  # a speaker name, as given in each job (job_speakers.name)
    voice: uuid.UUID | None = None  # a voice profile, as confirmed per job (.profile_id)


@dataclass(frozen=True)
class Tuning:
    candidates: int
    rrf_k: int
    ef_search: int
    max_scan_tuples: int


HEADLINE_OPTIONS = "StartSel=<mark>, StopSel=</mark>, HighlightAll=true"


def headline_sql(text: str, query: str) -> str:
    """The one highlight rule (a chunk's and a segment's): the words of `text` that match
    the query by Postgres's english text search in <mark>…</mark>, the whole text kept."""
    return (
        f"ts_headline('english', {text}, websearch_to_tsquery('english', {query}), "
        f"'{HEADLINE_OPTIONS}')"
    )


class _Args:
    """Positional SQL parameters, numbered as they are added."""

    def __init__(self, *initial: Any) -> None:
        self.values: list[Any] = list(initial)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _scope_filters(scope: Scope, args: _Args, alias: str) -> list[str]:
    """Conditions on `alias` (chunk_embeddings e or chunks c: both carry owner_id, job_id)."""
    filters: list[str] = []
    if scope.owner_id is not None:
        filters.append(f"{alias}.owner_id = {args.add(scope.owner_id)}")
    if scope.job_ids:
        filters.append(f"{alias}.job_id = ANY({args.add(list(scope.job_ids))}::uuid[])")
    job_conditions: list[str] = []
    if scope.language is not None:
        job_conditions.append(
            f"EXISTS (SELECT 1 FROM transcripts t WHERE t.job_id = j.id "
            f"AND lower(t.language) = lower({args.add(scope.language)}))"
        )
    if scope.created_from is not None:
        job_conditions.append(f"j.created_at >= {args.add(scope.created_from)}")
    if scope.created_to is not None:
        job_conditions.append(f"j.created_at < {args.add(scope.created_to)}")
    if job_conditions:
        # Job-level filters become a set of job ids (hashed by the planner), so the vector
        # scan stays an index scan filtered row by row.
        filters.append(
            f"{alias}.job_id IN (SELECT j.id FROM jobs j WHERE {' AND '.join(job_conditions)})"
        )
    if scope.speaker is not None:
        named = f"lower(s.name) = lower({args.add(scope.speaker)})"
        if alias == "c":
            filters.append(
                f"EXISTS (SELECT 1 FROM job_speakers s WHERE s.job_id = c.job_id AND {named}"
                " AND s.label = ANY(c.speakers))"
            )
        else:  # embeddings carry no speakers: their jobs, then the chunks re-checked above
            filters.append(f"e.job_id IN (SELECT s.job_id FROM job_speakers s WHERE {named})")
    if scope.voice is not None:
        confirmed = f"s.profile_id = {args.add(scope.voice)}"
        if alias == "c":
            filters.append(
                f"EXISTS (SELECT 1 FROM job_speakers s WHERE s.job_id = c.job_id AND {confirmed}"
                " AND s.label = ANY(c.speakers))"
            )
        else:
            filters.append(f"e.job_id IN (SELECT s.job_id FROM job_speakers s WHERE {confirmed})")
    if scope.exclude_chunk_id is not None:
        column = "chunk_id" if alias == "e" else "id"
        filters.append(f"{alias}.{column} <> {args.add(scope.exclude_chunk_id)}")
    return filters


def _vector_ctes(vec_where: str) -> str:
    """`nearest`: the candidates by cosine distance. The index scan first; if it came back
    short (a scope so small the iterative scan gave up), the exact scan of the scope —
    `+ 0` keeps the planner off the HNSW index there. Only one of the two is executed."""
    return f"""
        nearest_ann AS MATERIALIZED (
            SELECT e.chunk_id, e.embedding <=> $1 AS distance
            FROM chunk_embeddings e {vec_where}
            ORDER BY e.embedding <=> $1
            LIMIT $3
        ),
        nearest_exact AS MATERIALIZED (
            SELECT e.chunk_id, (e.embedding <=> $1) + 0 AS distance
            FROM chunk_embeddings e {vec_where}
            ORDER BY (e.embedding <=> $1) + 0
            LIMIT $3
        ),
        nearest AS (
            SELECT * FROM nearest_ann WHERE (SELECT count(*) FROM nearest_ann) >= $3
            UNION ALL
            SELECT * FROM nearest_exact WHERE (SELECT count(*) FROM nearest_ann) < $3
        ),
        vec AS (
            SELECT chunk_id, distance,
                   row_number() OVER (ORDER BY distance, chunk_id) AS rank
            FROM nearest
        )"""


def _text_cte(txt_and: str) -> str:
    return f"""
        words AS (
            SELECT c.id AS chunk_id, ts_rank_cd(c.tsv, q) AS text_score,
                   row_number() OVER (ORDER BY ts_rank_cd(c.tsv, q) DESC, c.id) AS rank
            FROM chunks c, websearch_to_tsquery('english', $2) AS q
            WHERE c.tsv @@ q{txt_and}
            ORDER BY ts_rank_cd(c.tsv, q) DESC, c.id
            LIMIT $3
        )"""


def build_search_sql(mode: SearchMode, scope: Scope, tuning: Tuning) -> tuple[str, _Args]:
    """SQL and parameters: $1 query vector (NULL in text mode), $2 query text ('' for
    "more like this"), $3 candidates per ranked list, $4 rows wanted, $5 offset, $6 RRF k."""
    args = _Args(None, None, tuning.candidates, 0, 0, tuning.rrf_k)
    # Every parameter must be used by the statement: the vector side's filters only where
    # there is a vector side.
    vec_filters = _scope_filters(scope, args, "e") if mode is not SearchMode.text else []
    txt_filters = _scope_filters(scope, args, "c")
    vec_where = f"WHERE {' AND '.join(vec_filters)}" if vec_filters else ""
    txt_and = "".join(f" AND {f}" for f in txt_filters)
    # The final join re-checks the scope on chunks itself, whatever the embeddings claim.
    final_where = f"WHERE {' AND '.join(txt_filters)}" if txt_filters else ""
    ctes: list[str] = []
    if mode is SearchMode.text:
        ctes.append(_text_cte(txt_and))
        fused = """
        fused AS (
            SELECT w.chunk_id, w.text_score AS score, NULL::bigint AS vector_rank,
                   w.rank AS text_rank
            FROM words w
        )"""
    elif mode is SearchMode.vector:
        ctes.append(_vector_ctes(vec_where))
        fused = """
        fused AS (
            SELECT v.chunk_id, 1 - v.distance AS score, v.rank AS vector_rank,
                   NULL::bigint AS text_rank
            FROM vec v
        )"""
    else:
        ctes.append(_vector_ctes(vec_where))
        ctes.append(_text_cte(txt_and))
        fused = """
        fused AS (
            SELECT coalesce(v.chunk_id, w.chunk_id) AS chunk_id,
                   coalesce(1.0 / ($6 + v.rank), 0) + coalesce(1.0 / ($6 + w.rank), 0) AS score,
                   v.rank AS vector_rank, w.rank AS text_rank
            FROM vec v FULL OUTER JOIN words w ON v.chunk_id = w.chunk_id
        )"""
    ctes.append(fused)
    headline = headline_sql("c.text", "$2")
    # `params` is never read: it types every parameter, whichever of them a mode uses.
    sql = f"""
        WITH params AS (SELECT $1::vector AS v, $2::text AS t, $3::int AS n, $4::int AS l,
                               $5::int AS o, $6::int AS k),
        {",".join(ctes)},
        page AS (
            SELECT f.*, c.job_id
            FROM fused f JOIN chunks c ON c.id = f.chunk_id
            {final_where}
            ORDER BY f.score DESC, f.text_rank IS NOT NULL DESC, f.vector_rank, f.chunk_id
            LIMIT $4 OFFSET $5
        )
        SELECT c.id AS chunk_id, c.job_id, c.idx, c.text, c.title, c.topic, c.keywords,
               c.start_s, c.end_s, c.speakers, j.filename, t.language, p.score, p.vector_rank,
               p.text_rank,
               CASE WHEN $2::text IS NULL OR $2::text = '' THEN NULL ELSE {headline} END
                   AS highlight
        FROM page p
        JOIN chunks c ON c.id = p.chunk_id
        JOIN jobs j ON j.id = c.job_id
        LEFT JOIN transcripts t ON t.job_id = c.job_id
        ORDER BY p.score DESC, p.text_rank IS NOT NULL DESC, p.vector_rank, p.chunk_id
    """
    return sql, args


async def _run(pool: Pool, sql: str, args: list[Any], tuning: Tuning) -> list[asyncpg.Record]:
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        # Filtered HNSW scans stop at ef_search candidates and could return fewer rows than
        # asked for; iterative scans keep walking the graph until the filter is satisfied.
        await conn.execute("SET LOCAL hnsw.iterative_scan = 'relaxed_order'")
        await conn.execute(f"SET LOCAL hnsw.ef_search = {int(tuning.ef_search)}")
        await conn.execute(f"SET LOCAL hnsw.max_scan_tuples = {int(tuning.max_scan_tuples)}")
        # Planned for the actual owner every time: after five runs of a prepared statement
        # PostgreSQL may switch to a generic plan, which cannot tell an owner of 100k chunks
        # from one of 50 and then sorts all of a large owner's vectors exactly
        # (docs/benchmarks.md, 1M chunks: ~150 ms instead of ~10 ms). Planning costs ~2 ms.
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows


async def search(
    pool: Pool,
    *,
    mode: SearchMode,
    query_text: str,
    query_vector: list[float] | None,
    scope: Scope,
    tuning: Tuning,
    limit: int,
    offset: int,
) -> list[asyncpg.Record]:
    """One page of results (`limit` rows from `offset`) in rank order."""
    sql, args = build_search_sql(mode, scope, tuning)
    args.values[0] = query_vector
    args.values[1] = query_text
    args.values[3] = limit
    args.values[4] = offset
    return await _run(pool, sql, args.values, tuning)


async def explain_search(
    pool: Pool,
    *,
    mode: SearchMode,
    query_text: str,
    query_vector: list[float] | None,
    scope: Scope,
    tuning: Tuning,
    limit: int,
) -> str:
    """The executed plan of a search (EXPLAIN ANALYZE), for tests and benchmarks."""
    sql, args = build_search_sql(mode, scope, tuning)
    args.values[0] = query_vector
    args.values[1] = query_text
    args.values[3] = limit
    rows = await _run(pool, f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}", args.values, tuning)
    return "\n".join(r[0] for r in rows)


async def chunk_source(pool: Pool, chunk_id: int) -> asyncpg.Record | None:
    """The owner and stored vector of a chunk, for "more like this"."""
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT c.id, c.owner_id, c.text, e.embedding FROM chunks c "
        "LEFT JOIN chunk_embeddings e ON e.chunk_id = c.id WHERE c.id = $1",
        chunk_id,
    )
    return row


async def speaker_lines(
    pool: Pool, chunks: list[asyncpg.Record]
) -> tuple[dict[int, list[Line]], dict[tuple[uuid.UUID, str], asyncpg.Record]]:
    """The lines with speakers of each chunk that has speakers (mxw_shared.speakers, from
    the stored segments and turns), and those jobs' speakers (name, profile_id)."""
    spoken = [c for c in chunks if c["speakers"]]
    if not spoken:
        return {}, {}
    jobs = list({c["job_id"] for c in spoken})
    async with pool.acquire() as conn:
        segments = await conn.fetch(
            "SELECT s.job_id, s.idx, s.start_s, s.end_s, s.text, s.words FROM segments s"
            " JOIN unnest($1::bigint[], $2::uuid[], $3::float8[], $4::float8[])"
            "   AS c(id, job_id, start_s, end_s) ON s.job_id = c.job_id"
            "   AND s.end_s > c.start_s AND s.start_s < c.end_s"
            " ORDER BY s.job_id, s.idx",
            [c["chunk_id"] for c in spoken],
            [c["job_id"] for c in spoken],
            [c["start_s"] for c in spoken],
            [c["end_s"] for c in spoken],
        )
        turns = await conn.fetch(
            "SELECT job_id, start_s, end_s, speaker FROM speaker_turns"
            " WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, idx",
            jobs,
        )
        names = await conn.fetch(
            "SELECT job_id, label, name, profile_id FROM job_speakers"
            " WHERE job_id = ANY($1::uuid[])",
            jobs,
        )
    turns_of: dict[uuid.UUID, list[Turn]] = {}
    for t in turns:
        turns_of.setdefault(t["job_id"], []).append(Turn(t["start_s"], t["end_s"], t["speaker"]))
    segments_of: dict[uuid.UUID, dict[int, asyncpg.Record]] = {}
    for seg in segments:  # a segment in two chunks of its job comes twice: once is enough
        segments_of.setdefault(seg["job_id"], {})[seg["idx"]] = seg
    lines_of = {
        job: attribute_all(rows.values(), Turns(turns_of.get(job, ())))
        for job, rows in segments_of.items()
    }
    out = {
        c["chunk_id"]: lines_in(lines_of.get(c["job_id"], []), c["start_s"], c["end_s"])
        for c in spoken
    }
    return out, {(r["job_id"], r["label"]): r for r in names}


async def chunk_segments(
    pool: Pool, chunks: list[asyncpg.Record], query_text: str
) -> dict[int, list[asyncpg.Record]]:
    """The transcript segments of each chunk of a page (those overlapping its seconds), read
    live from `segments` in one query, so a corrected text shows at once; each with
    `lexical`, its ts_rank against the query's words (0 without query text)."""
    if not chunks:
        return {}
    rows = await pool.fetch(
        "SELECT c.id AS chunk_id, s.idx, s.start_s, s.end_s, s.text, s.words,"
        " CASE WHEN $5::text = '' THEN 0.0::float8 ELSE"
        "   ts_rank(to_tsvector('english', s.text), websearch_to_tsquery('english', $5))::float8"
        " END AS lexical"
        " FROM unnest($1::bigint[], $2::uuid[], $3::float8[], $4::float8[])"
        "   AS c(id, job_id, start_s, end_s)"
        " JOIN segments s ON s.job_id = c.job_id"
        "   AND s.end_s > c.start_s AND s.start_s < c.end_s"
        " ORDER BY c.id, s.idx",
        [c["chunk_id"] for c in chunks],
        [c["job_id"] for c in chunks],
        [c["start_s"] for c in chunks],
        [c["end_s"] for c in chunks],
        query_text,
    )
    out: dict[int, list[asyncpg.Record]] = {}
    for row in rows:
        out.setdefault(row["chunk_id"], []).append(row)
    return out


async def headlines(pool: Pool, texts: list[str], query_text: str) -> list[str]:
    """`headline_sql` of each text, in order (the few segments a page shows)."""
    if not texts:
        return []
    rows = await pool.fetch(
        f"SELECT {headline_sql('x.t', '$2')} AS h"
        " FROM unnest($1::text[]) WITH ORDINALITY AS x(t, n) ORDER BY x.n",
        texts,
        query_text,
    )
    return [r["h"] for r in rows]
