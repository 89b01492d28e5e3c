"""The fault suite: the real stack (`mxw up`, real processes) broken on purpose.

Every accepted upload must reach done or a clear failure through killed workers, a broker
that is lost and comes back (the embedded one empty, Apache Kafka from its logs), a database
restart, poison events and duplicate deliveries, and a gateway killed mid-upload must leave
nothing behind. Once on the embedded broker and once on Apache Kafka (`mxw up --broker
kafka`). Timings are shortened by settings (leases of a few seconds, a sweeper every second)
so the suite stays bounded; the figures for the defaults are in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from aiokafka import AIOKafkaProducer
from mxw_local.cli import app as mxw_cli
from mxw_shared import topics
from mxw_shared.contracts import AudioUploaded, ChunksReady, Envelope, TranscriptReady
from typer.testing import CliRunner

pytestmark = pytest.mark.faults

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
SHORT = (FIXTURES / "short_en.ogg").read_bytes()
FAULT_ENV = {
    "MXW_LEASE_S": "4",
    "MXW_SWEEP_INTERVAL_S": "1",
    "MXW_STUCK_AFTER_S": "8",
    "MXW_MAX_STAGE_STARTS": "10",
    "MXW_RETRY_BACKOFF_S": "0.2",
    "MXW_BLOB_JANITOR_INTERVAL_S": "1",
    "MXW_ABANDONED_PART_AFTER_S": "0",
    # SIGTERM gives the job in hand half a second, then releases it.
    "MXW_SHUTDOWN_GRACE_S": "0.5",
}
STAGE_CONSUMERS = {
    topics.AUDIO_UPLOADED: "transcriber",
    topics.TRANSCRIPT_READY: "chunker",
    topics.CHUNKS_READY: "embedder",
}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, launch_stack: Any, broker_kind: str
) -> Iterator[Any]:
    data_dir = tmp_path_factory.mktemp(f"faults-{broker_kind}")
    with launch_stack(data_dir, FAULT_ENV, broker=broker_kind) as running:
        yield running


@pytest.fixture(scope="module")
async def producer(stack: Any) -> AsyncIterator[AIOKafkaProducer]:
    kafka = AIOKafkaProducer(bootstrap_servers=stack.info.kafka_bootstrap_servers, acks="all")
    await kafka.start()
    yield kafka
    await kafka.stop()


async def submit(stack: Any, user: str, count: int) -> list[str]:
    """Upload the short fixture `count` times (force: each upload is its own job)."""
    ids = []
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=60) as client:
        for i in range(count):
            response = await client.post(
                "/jobs",
                headers=stack.auth(user),
                files={"file": (f"short-{i}.ogg", SHORT, "audio/ogg")},
                data={"force": "true", "language": "en"},
            )
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    return ids


async def stage_rows(db: asyncpg.Pool, ids: list[str]) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT job_id::text, stage, state, error FROM job_stages WHERE job_id = ANY($1::uuid[])",
        ids,
    )


async def wait_done(db: asyncpg.Pool, ids: list[str], timeout_s: float, stack: Any) -> None:
    """Until every job's last stage is done; a failed stage fails the test at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await stage_rows(db, ids)
        failed = [(r["job_id"], r["stage"], r["error"]) for r in rows if r["state"] == "failed"]
        assert not failed, failed
        done = {r["job_id"] for r in rows if r["stage"] == "embed" and r["state"] == "done"}
        if done >= set(ids):
            return
        if time.monotonic() > deadline:
            stuck = sorted(set(ids) - done)
            states = [
                (r["job_id"][:8], r["stage"], r["state"]) for r in rows if r["job_id"] in stuck
            ]
            pytest.fail(
                f"{len(stuck)}/{len(ids)} jobs not done after {timeout_s}s: {states}"
                f"\n{stack.log_tail(4000)}"
            )
        await asyncio.sleep(0.5)


async def wait_stage_running(
    db: asyncpg.Pool, ids: list[str], stage: str, timeout_s: float
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(r["stage"] == stage and r["state"] == "running" for r in await stage_rows(db, ids)):
            return True
        await asyncio.sleep(0.05)
    return False


async def wait_http(url: str, status: int, timeout_s: float = 90) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    last: httpx.Response | None = None
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                last = await client.get(url)
                if last.status_code == status:
                    return last
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    pytest.fail(
        f"{url} never answered {status} (last: {last and last.status_code} {last and last.text})"
    )


async def snapshot(db: asyncpg.Pool, job_id: str) -> dict[str, Any]:
    """Everything a job produced: what 'identical final state' compares."""
    jid = uuid.UUID(job_id)
    return {
        "transcripts": await db.fetch(
            "SELECT text, language, model FROM transcripts WHERE job_id = $1", jid
        ),
        "segments": await db.fetch(
            "SELECT idx, start_s, end_s, text FROM segments WHERE job_id = $1 ORDER BY idx", jid
        ),
        "chunks": await db.fetch(
            "SELECT idx, start_s, end_s, text FROM chunks WHERE job_id = $1 ORDER BY idx", jid
        ),
        "vectors": await db.fetchval(
            "SELECT count(*) FROM chunk_embeddings WHERE job_id = $1", jid
        ),
        "stages": await db.fetch(
            "SELECT stage, state, generation FROM job_stages WHERE job_id = $1 ORDER BY stage", jid
        ),
        "done_events": await db.fetchval(
            "SELECT count(*) FROM job_events WHERE job_id = $1 AND state = 'done'", jid
        ),
    }


def assert_complete(snap: dict[str, Any], job_id: str) -> None:
    """One transcript, one chunk set numbered 0..n-1, a vector for every chunk."""
    assert len(snap["transcripts"]) == 1, job_id
    assert snap["transcripts"][0]["text"].strip(), job_id
    chunk_idx = [r["idx"] for r in snap["chunks"]]
    assert chunk_idx == list(range(len(chunk_idx))), (job_id, chunk_idx)
    assert chunk_idx, job_id
    assert snap["vectors"] == len(chunk_idx), job_id
    assert snap["done_events"] == 1, job_id


@pytest.fixture(scope="module")
async def survived_kills(stack: Any, db: asyncpg.Pool) -> dict[str, Any]:
    """20 jobs while each worker service is SIGKILLed, at a moment it holds a job when that
    can be caught, else at a random moment."""
    ids = await submit(stack, "kilian", 20)
    killed: dict[str, int] = {}
    # The transcriber first, while it holds a job; then, while jobs flow again, the chunker
    # and the embedder (restarting at the same time, as after a node loss).
    for service, stage, wait_ready in (
        ("transcriber", "transcribe", True),
        ("chunker", "chunk", False),
        ("embedder", "embed", False),
    ):
        await wait_stage_running(db, ids, stage, timeout_s=30)
        await asyncio.sleep(random.uniform(0.0, 0.3))
        killed[service] = stack.kill(service)
        if wait_ready:
            await wait_http(f"{stack.url(service)}/readyz", 200)
    await wait_done(db, ids, 240, stack)
    return {"ids": ids, "killed": killed, "stack": stack}


async def test_sigkilled_workers_lose_and_duplicate_nothing(survived_kills, db):
    for service, old in survived_kills["killed"].items():
        new = survived_kills["stack"].service_pid(service)
        assert new is not None, service
        assert new != old, f"{service} was not restarted"
    for job_id in survived_kills["ids"]:
        assert_complete(await snapshot(db, job_id), job_id)
    # The kills hit work in progress: some stage was started more than once.
    restarted = await db.fetchval(
        "SELECT count(*) FROM job_stages WHERE job_id = ANY($1::uuid[]) AND attempts > 1",
        survived_kills["ids"],
    )
    assert restarted >= 1


async def test_every_event_delivered_twice_changes_nothing(survived_kills, db, producer):
    job_id = survived_kills["ids"][0]
    before = await snapshot(db, job_id)
    rows = await db.fetch(
        "SELECT topic, key, headers, payload FROM outbox WHERE key = $1 AND topic = ANY($2)"
        " ORDER BY id",
        job_id,
        [*STAGE_CONSUMERS, topics.EMBEDDINGS_READY, topics.JOB_STATUS],
    )
    assert {r["topic"] for r in rows} >= set(STAGE_CONSUMERS)
    fresh_ids: dict[str, list[str]] = {}
    for row in rows:
        # The same record again (a redelivery), and a copy under a new id (a producer retry).
        stored = row["headers"]
        original = json.loads(stored) if isinstance(stored, str) else dict(stored)
        copy = {**original, "ce_id": str(uuid.uuid4())}
        fresh_ids.setdefault(row["topic"], []).append(copy["ce_id"])
        for headers in (original, copy):
            await producer.send_and_wait(
                row["topic"],
                value=bytes(row["payload"]),
                key=row["key"].encode(),
                headers=[(k, str(v).encode()) for k, v in headers.items()],
            )
    # Every stage consumer handled its copies (skipped them, as processed records show).
    deadline = time.monotonic() + 60
    for topic, consumer in STAGE_CONSUMERS.items():
        while True:
            handled = await db.fetchval(
                "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = ANY($2)",
                consumer,
                fresh_ids[topic],
            )
            if handled == len(fresh_ids[topic]):
                break
            assert time.monotonic() < deadline, f"{consumer} did not handle the copies"
            await asyncio.sleep(0.2)
    assert await snapshot(db, job_id) == before


async def test_poison_events_are_dead_lettered_and_the_pipeline_flows_on(
    stack, db, producer, survived_kills
):
    missing_audio = AudioUploaded(
        job_id=uuid.uuid4(),
        owner_id="mallory",
        audio_uri=(stack.data_dir / "blobs" / "never-written.ogg").as_uri(),
        sha256="0" * 64,
    )
    unknown_job = ChunksReady(job_id=uuid.uuid4(), owner_id="mallory", chunk_count=1, method="x")
    future = json.loads(
        TranscriptReady(
            job_id=uuid.uuid4(), owner_id="mallory", segment_count=1, duration_s=1, model="m"
        ).model_dump_json()
    )
    future["schema_version"] = 99
    poison: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("invalid JSON", topics.AUDIO_UPLOADED, b"{not json", _headers(missing_audio)),
        (
            "unknown schema",
            topics.TRANSCRIPT_READY,
            json.dumps(future).encode(),
            _headers(missing_audio),
        ),
        (
            "unknown job",
            topics.CHUNKS_READY,
            unknown_job.model_dump_json().encode(),
            _headers(unknown_job),
        ),
        (
            "missing blob",
            topics.AUDIO_UPLOADED,
            missing_audio.model_dump_json().encode(),
            _headers(missing_audio),
        ),
        ("invalid status", topics.JOB_STATUS, b"\xff\xfe not json", _headers(unknown_job)),
    ]
    for _, topic, value, headers in poison:
        await producer.send_and_wait(
            topic,
            value=value,
            key=str(missing_audio.job_id).encode(),
            headers=[(k, v.encode()) for k, v in headers.items()],
        )
    behind = await submit(stack, "patience", 2)
    await wait_done(db, behind, 120, stack)

    # The job of the missing blob failed with the reason, for its owner to read.
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=30) as client:
        job = (
            await client.get(f"/jobs/{missing_audio.job_id}", headers=stack.auth("mallory"))
        ).json()
    assert job["state"] == "failed", job
    assert "audio not found" in json.dumps(job)

    letters = _dlq_list(stack)
    reasons = {letter["id"]: letter.get("error") or "" for letter in letters}
    by_topic: dict[str, list[str]] = {}
    for letter in letters:
        by_topic.setdefault(letter["original_topic"] or letter["topic"], []).append(
            reasons[letter["id"]]
        )
    assert any("invalid event" in r for r in by_topic[topics.AUDIO_UPLOADED]), by_topic
    assert any("audio not found" in r for r in by_topic[topics.AUDIO_UPLOADED]), by_topic
    assert any(
        "schema_version" in r or "invalid event" in r for r in by_topic[topics.TRANSCRIPT_READY]
    )
    assert any(f"unknown job {unknown_job.job_id}" in r for r in by_topic[topics.CHUNKS_READY])
    # The notifier survived its poison and still serves.
    await wait_http(f"{stack.url('notifier')}/readyz", 200, timeout_s=10)

    # An admin replays the failed job's dead letter from the CLI: a new run of the job.
    [missing] = [
        letter
        for letter in letters
        if letter.get("job_id") == str(missing_audio.job_id)
        and "audio not found" in (letter.get("error") or "")
    ]
    replay = CliRunner().invoke(
        mxw_cli, ["dlq", "replay", missing["id"], "--data-dir", str(stack.data_dir)]
    )
    assert replay.exit_code == 0, replay.output
    assert "reprocessed" in replay.output
    generation = await db.fetchval(
        "SELECT generation FROM jobs WHERE id = $1", missing_audio.job_id
    )
    assert generation == 1


def _headers(event: Any) -> dict[str, str]:
    return Envelope.for_event(event, source="fault-suite").to_headers()


def _dlq_list(stack: Any) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        mxw_cli, ["dlq", "list", "--json", "--limit", "200", "--data-dir", str(stack.data_dir)]
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def test_broker_lost_and_back_every_job_still_finishes(stack, db):
    ids = await submit(stack, "brokerless", 4)
    await wait_stage_running(db, ids, "transcribe", timeout_s=60)
    broker = stack.broker_pid()
    assert broker is not None
    # Broker unresponsive: readiness says so, and uploads are still accepted (the outbox).
    os.kill(broker, signal.SIGSTOP)
    try:
        not_ready = await wait_http(f"{stack.url('gateway')}/readyz", 503, timeout_s=30)
        assert "broker" in not_ready.text
        ids += await submit(stack, "brokerless", 2)
    finally:
        # And gone: tansu comes back empty (in-memory storage), Apache Kafka from its logs
        # after an unclean shutdown (kill -9: no flush, log recovery on start).
        os.kill(broker, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.broker_pid() in (None, broker):
        assert time.monotonic() < deadline, "the broker was not restarted"
        await asyncio.sleep(0.2)
    await wait_done(db, ids, 180, stack)
    for job_id in ids:
        assert_complete(await snapshot(db, job_id), job_id)
    for service in ("gateway", "transcriber", "chunker", "embedder"):
        await wait_http(f"{stack.url(service)}/readyz", 200, timeout_s=30)


async def test_database_restart_mid_pipeline_every_job_still_finishes(stack, db):
    ids = await submit(stack, "restartpg", 4)
    await wait_stage_running(db, ids, "transcribe", timeout_s=60)
    log_before = stack.log.stat().st_size
    postgres = stack.postgres()
    await asyncio.to_thread(postgres.stop)
    try:
        not_ready = await wait_http(f"{stack.url('transcriber')}/readyz", 503, timeout_s=20)
        assert "database" in not_ready.text
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(postgres.start)
    await db.expire_connections()
    await wait_done(db, ids, 180, stack)
    for job_id in ids:
        assert_complete(await snapshot(db, job_id), job_id)
    # Nobody crash-looped: the supervisor restarted no service during the outage.
    with stack.log.open("rb") as fh:
        fh.seek(log_before)
        assert b"restarting in" not in fh.read()


def repeated_wav(path: Path, times: int) -> bytes:
    """`path`'s speech `times` over as 16 kHz mono WAV: work that cannot finish within
    the shutdown grace on an idle machine (the fixture alone takes ~2 s with tiny.en)."""
    import io
    import math
    import wave

    import numpy as np
    from mxw_shared.audio_decode import decode_audio

    samples = np.tile(decode_audio(path, math.inf), times)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((samples * 32767).clip(-32768, 32767).astype("<i2").tobytes())
    return buffer.getvalue()


async def test_sigterm_releases_the_job_in_hand_for_the_next_worker(stack, db):
    audio = repeated_wav(FIXTURES / "solar_and_bread.ogg", 12)  # ~3 minutes of speech
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=60) as client:
        response = await client.post(
            "/jobs",
            headers=stack.auth("terminus"),
            files={"file": ("long.wav", audio)},
            data={"force": "true", "language": "en"},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert await wait_stage_running(db, [job_id], "transcribe", timeout_s=60)
    log_before = stack.log.stat().st_size
    old = stack.service_pid("transcriber")
    assert old is not None
    os.kill(old, signal.SIGTERM)
    await asyncio.to_thread(psutil.Process(old).wait, 60)
    # Gone within the grace period, and the job it held is released for the next worker
    # (no owner), not left to a lease that must run out first.
    released = await db.fetchrow(
        "SELECT state, lease_owner FROM job_stages WHERE job_id = $1 AND stage = 'transcribe'",
        uuid.UUID(job_id),
    )
    assert released["state"] == "running"
    assert released["lease_owner"] is None
    await wait_done(db, [job_id], 240, stack)

    with stack.log.open("rb") as fh:
        fh.seek(log_before)
        log = fh.read().decode(errors="replace")
    # A clean stop: the lifespan's shutdown ran (uvicorn then re-raises SIGTERM: exit -15).
    assert any(
        line.startswith("transcriber") and "Application shutdown complete" in line
        for line in log.splitlines()
    ), log[-3000:]
    stage = await db.fetchrow(
        "SELECT attempts FROM job_stages WHERE job_id = $1 AND stage = 'transcribe'",
        uuid.UUID(job_id),
    )
    assert stage["attempts"] == 2  # stopped once, then taken over


def big_wav(total_bytes: int) -> tuple[bytes, int]:
    """A valid WAV of `total_bytes`: one second of 16 kHz silence after a large JUNK chunk
    (decoders skip it), so a 200 MB upload transcribes in no time. Returns the header and
    the number of JUNK bytes that must follow it."""
    data = b"\x00\x00" * 16000
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 16000, 32000, 2, 16)
    junk_len = total_bytes - 12 - len(fmt) - 8 - 8 - len(data)
    riff_size = total_bytes - 8
    header = (
        struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE")
        + fmt
        + struct.pack("<4sI", b"JUNK", junk_len)
    )
    return header, junk_len


async def wav_body(
    boundary: str, total_bytes: int, on_sent: Any = None, at: int | None = None
) -> AsyncIterator[bytes]:
    header, junk_len = big_wav(total_bytes)
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + header
    sent = len(header)
    block = b"\x00" * (1024 * 1024)
    remaining = junk_len
    while remaining:
        piece = block[: min(len(block), remaining)]
        remaining -= len(piece)
        sent += len(piece)
        yield piece
        if on_sent is not None and at is not None and sent >= at:
            on_sent()
            on_sent = None
    yield struct.pack("<4sI", b"data", 32000) + b"\x00\x00" * 16000
    yield f"\r\n--{boundary}--\r\n".encode()


async def test_gateway_killed_mid_upload_leaves_nothing_and_the_client_can_retry(stack, db):
    size = 200 * 1024 * 1024
    boundary = uuid.uuid4().hex
    headers = {
        **stack.auth("uploader"),
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    blobs = stack.data_dir / "blobs"
    stored_before = {p for p in blobs.glob("[0-9a-f][0-9a-f]/*")}
    parts_at_kill: list[Path] = []

    def kill_gateway() -> None:
        parts_at_kill.extend((blobs / "tmp").glob("*.part"))
        stack.kill("gateway")

    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=60) as client:
        with pytest.raises(httpx.HTTPError):
            await client.post(
                "/jobs", headers=headers, content=wav_body(boundary, size, kill_gateway, size // 2)
            )
    assert parts_at_kill, "the upload was not in progress when the gateway was killed"

    await wait_http(f"{stack.url('gateway')}/readyz", 200)
    deadline = time.monotonic() + 30
    while list((blobs / "tmp").glob("*.part")):
        assert time.monotonic() < deadline, "the abandoned part file was not removed"
        await asyncio.sleep(0.2)
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'uploader'") == 0
    assert await db.fetchval("SELECT count(*) FROM blobs WHERE owner_id = 'uploader'") == 0
    assert {p for p in blobs.glob("[0-9a-f][0-9a-f]/*")} == stored_before

    # The client retries the same upload: accepted whole, and the job runs.
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=120) as client:
        response = await client.post("/jobs", headers=headers, content=wav_body(boundary, size))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["size_bytes"] == size
    await wait_done(db, [job["id"]], 120, stack)
