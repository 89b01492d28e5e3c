"""Search on a table large enough for the planner to use its indexes and for a filtered
HNSW scan to lose rows: 10 000 chunks with synthetic 384-d vectors (COPY), one large
owner (half the table), a crowd of others whose vectors all sit near the query, and a
tiny owner (30 chunks, 0.3 %) whose vectors point elsewhere.

The vectors are synthetic so the geometry is controlled: the query direction is known, and
every crowd vector is nearer to it than any of the tiny owner's."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from mxw_gateway.search import repository
from mxw_gateway.search.repository import Scope, SearchMode, Tuning
from mxw_gateway.search.service import MAX_SCAN_TUPLES
from mxw_gateway.settings import GatewaySettings

DIM = 384
BIG, TINY = "bigco-scale", "tiny-scale"
N_BIG, N_CROWD, N_TINY = 5000, 4970, 30
DEFAULTS = GatewaySettings()
TUNING = Tuning(
    candidates=DEFAULTS.search_min_candidates,
    rrf_k=DEFAULTS.search_rrf_k,
    ef_search=DEFAULTS.search_hnsw_ef_search,
    max_scan_tuples=MAX_SCAN_TUPLES,
)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def query() -> np.ndarray:
    return unit(np.random.default_rng(1).standard_normal(DIM).astype(np.float32))


@pytest.fixture(scope="module")
async def table(db, make_job, query):
    rng = np.random.default_rng(2)
    near = unit(query + rng.standard_normal((N_BIG + N_CROWD, DIM)).astype(np.float32) * 0.04)
    far = unit(rng.standard_normal((N_TINY, DIM)).astype(np.float32))
    far[0] = query  # the tiny owner's one chunk about the query: "more like this" source
    owners = [BIG] * N_BIG + [f"crowd-scale-{i % 200}" for i in range(N_CROWD)] + [TINY] * N_TINY
    vectors = np.vstack([near, far])
    jobs: dict[str, uuid.UUID] = {}
    for owner in dict.fromkeys(owners):
        jobs[owner] = await make_job(owner)
    first_id = await db.fetchval("SELECT nextval('chunks_id_seq')")
    ids = list(range(first_id + 1, first_id + 1 + len(owners)))
    await db.execute("SELECT setval('chunks_id_seq', $1)", ids[-1])
    per_job: dict[str, int] = {}
    chunk_rows = []
    for position, (cid, owner) in enumerate(zip(ids, owners, strict=True)):
        idx = per_job[owner] = per_job.get(owner, -1) + 1
        # One chunk in a hundred says "heliotrope": a selective word for the GIN index.
        # By position, not id: ids depend on what other tests inserted before.
        word = "heliotrope" if position % 100 == 1 else "meadow"
        text = f"chunk {cid} of {owner} about the {word} and common words"
        chunk_rows.append((cid, jobs[owner], owner, idx, text, 0.0, 1.0, "synthetic"))
    async with db.acquire() as conn:
        await conn.copy_records_to_table(
            "chunks",
            records=chunk_rows,
            columns=["id", "job_id", "owner_id", "idx", "text", "start_s", "end_s", "method"],
        )
        await conn.copy_records_to_table(
            "chunk_embeddings",
            records=[
                (cid, jobs[o], o, "synthetic", v)
                for cid, o, v in zip(ids, owners, vectors, strict=True)
            ],
            columns=["chunk_id", "job_id", "owner_id", "model", "embedding"],
        )
        await conn.execute("ANALYZE chunks")
        await conn.execute("ANALYZE chunk_embeddings")
    tiny_ids = ids[N_BIG + N_CROWD :]
    return {"tiny": tiny_ids, "big": ids[:N_BIG]}


async def test_a_plain_hnsw_scan_would_lose_the_tiny_owners_rows(db, table, query):
    """The premise: without iterative scans, filtering by owner after the index scan finds
    almost none of the tiny owner's chunks (they are far from the query)."""
    async with db.acquire() as conn, conn.transaction():
        # Force the index path the planner would otherwise avoid for a small owner.
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            await conn.execute(f"SET LOCAL {setting} = off")
        await conn.execute("SET LOCAL hnsw.ef_search = 200")
        rows = await conn.fetch(
            "SELECT chunk_id FROM chunk_embeddings WHERE owner_id = $1 "
            "ORDER BY embedding <=> $2 LIMIT 20",
            TINY,
            query,
        )
    assert len(rows) < 20


@pytest.mark.parametrize("mode", [SearchMode.vector, SearchMode.hybrid])
async def test_a_tiny_owner_gets_the_full_limit(db, table, query, mode):
    rows = await repository.search(
        db,
        mode=mode,
        query_text="meadow",
        query_vector=[float(x) for x in query],
        scope=Scope(owner_id=TINY),
        tuning=TUNING,
        limit=20,
        offset=0,
    )
    assert len(rows) == 20
    assert {r["chunk_id"] for r in rows} <= set(table["tiny"])
    # The tiny owner's chunk that points at the query: first by meaning alone; in hybrid
    # mode its words tie with its siblings', so it is on the page but need not lead.
    if mode == SearchMode.vector:
        assert rows[0]["chunk_id"] == table["tiny"][0]
    else:
        assert table["tiny"][0] in {r["chunk_id"] for r in rows}


async def test_when_the_iterative_scan_gives_up_the_exact_scan_fills_the_page(db, table, query):
    """With a scan budget far below what reaching the tiny owner's rows takes, the index
    scan comes back short and the exact scan of the owner's rows answers instead."""
    stingy = Tuning(candidates=25, rrf_k=60, ef_search=40, max_scan_tuples=200)
    sql, args = repository.build_search_sql(SearchMode.vector, Scope(owner_id=TINY), stingy)
    args.values[0], args.values[1], args.values[3] = query, "", 20
    async with db.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("SET LOCAL hnsw.iterative_scan = 'relaxed_order'")
        await conn.execute("SET LOCAL hnsw.ef_search = 40")
        await conn.execute("SET LOCAL hnsw.max_scan_tuples = 200")
        # For 30 rows the planner rightly reads the owner's rows through the owner b-tree
        # and sorts them (exact). To test the fallback the index scan must run: the
        # b-tree is dropped inside this transaction (rolled back) and seq scans are off.
        await conn.execute("DROP INDEX chunk_embeddings_owner")
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}", *args.values
            )
        )
        rows = await conn.fetch(sql, *args.values)
        await transaction.rollback()  # the b-tree comes back
    ann_part = plan[plan.index("CTE nearest_ann") : plan.index("CTE nearest_exact")]
    assert "Index Scan using chunk_embeddings_hnsw" in ann_part, plan
    exact_part = plan[plan.index("CTE nearest_exact") :]
    assert "never executed" not in exact_part.split("\n")[1], plan
    assert len(rows) == 20
    assert {r["chunk_id"] for r in rows} <= set(table["tiny"])


async def test_more_like_this_for_a_tiny_owner_fills_the_page(start_gateway, token, table):
    async with start_gateway() as client:
        response = await client.get(
            f"/search/similar/{table['tiny'][0]}", params={"limit": 20}, headers=token(TINY)
        )
    assert response.status_code == 200, response.text
    found = [r["chunk_id"] for r in response.json()["results"]]
    assert len(found) == 20
    assert set(found) <= set(table["tiny"][1:])
    assert response.json()["next_offset"] == 20


async def test_searches_use_the_hnsw_and_gin_indexes(db, table, query):
    """EXPLAIN ANALYZE of the gateway's hybrid SQL, planner settings untouched. For the
    large owner: the vector side is an HNSW index scan and the exact fallback is never
    executed; the same over everyone (admin). The words side: on a 10k-row table the
    planner may rightly prefer a sequential or owner-index scan (it does in this shared
    test database once other modules' chunks are in), so the check there is that the GIN
    index serves the search's own predicate: with sequential scans off, a predicate the
    index could not answer would still show a Seq Scan."""
    await db.execute("ANALYZE chunks")
    await db.execute("ANALYZE chunk_embeddings")
    plan = await repository.explain_search(
        db,
        mode=SearchMode.hybrid,
        query_text="heliotrope",
        query_vector=[float(x) for x in query],
        scope=Scope(owner_id=BIG),
        tuning=TUNING,
        limit=10,
    )
    assert "Index Scan using chunk_embeddings_hnsw on chunk_embeddings" in plan, plan
    exact_part = plan[plan.index("CTE nearest_exact") :]
    assert "never executed" in exact_part.split("\n")[1], plan
    # Admin search over everyone: the same indexes.
    everyone = await repository.explain_search(
        db,
        mode=SearchMode.hybrid,
        query_text="heliotrope",
        query_vector=[float(x) for x in query],
        scope=Scope(owner_id=None),
        tuning=TUNING,
        limit=10,
    )
    assert "Index Scan using chunk_embeddings_hnsw" in everyone, everyone
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        words = await conn.fetch(
            "EXPLAIN (COSTS OFF) SELECT id FROM chunks"
            " WHERE tsv @@ websearch_to_tsquery('english', $1)",
            "heliotrope",
        )
    assert "Bitmap Index Scan on chunks_tsv" in "\n".join(r[0] for r in words)
