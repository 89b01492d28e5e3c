"""Notifier test fixtures: real notifier servers (uvicorn) against the real broker and
database, and helpers that write status events the way the stages do."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from mxw_local.infra import free_port
from mxw_notifier.main import create_app, listening_socket, server_config
from mxw_notifier.settings import NotifierSettings
from mxw_shared.contracts import Envelope, JobState, JobStatus, Stage
from mxw_shared.jobs import record_status


@dataclass(frozen=True)
class Notifier:
    http: str
    ws: str
    app: object


@pytest.fixture(scope="session")
def start_notifier(infra):
    """Async context manager: a notifier served by uvicorn on a free port, ready."""

    @asynccontextmanager
    async def start(**overrides):
        port = free_port()
        values = {
            "host": "127.0.0.1",
            "port": port,
            "ping_interval_s": 1.0,
            "ping_timeout_s": 1.0,
            "webhook_poll_interval_s": 0.2,
            # Its own webhook group: a member an earlier test's notifier left behind would
            # hold this one's join until the broker drops it (no test depends on another).
            "webhook_group_id": f"notifier-webhooks-{uuid.uuid4().hex[:8]}",
            **overrides,
        }
        settings = infra.settings(NotifierSettings, "notifier", **values)
        app = create_app(settings)
        server = uvicorn.Server(server_config(app, settings))
        sock = listening_socket(settings)
        task = asyncio.create_task(server.serve(sockets=None if sock is None else [sock]))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient() as client:
            while True:
                assert not task.done(), "notifier server stopped during start-up"
                if server.started and (await client.get(f"{base}/readyz")).status_code == 200:
                    break
                assert time.monotonic() < deadline, "notifier never became ready"
                await asyncio.sleep(0.1)
        try:
            yield Notifier(http=base, ws=f"ws://127.0.0.1:{port}", app=app)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 60)

    return start


@pytest.fixture(scope="session")
def record(db):
    """Write a status the way the stages do: history row + outbox row in one transaction;
    returns the envelope and the event (with its seq) without publishing it."""

    async def write(
        job_id: uuid.UUID, state: JobState, stage: Stage = Stage.transcribe, **kw
    ) -> tuple[Envelope, JobStatus]:
        fields = {"progress": 0.5, "message": None, **kw}
        async with db.acquire() as conn, conn.transaction():
            owner = await conn.fetchval("SELECT owner_id FROM jobs WHERE id = $1", job_id)
            envelope = await record_status(
                conn,
                job_id=job_id,
                owner_id=owner,
                stage=stage,
                state=state,
                source="tests",
                **fields,
            )
            seq = await conn.fetchval("SELECT seq FROM job_events WHERE event_id = $1", envelope.id)
        event = JobStatus(
            job_id=job_id, owner_id=owner, stage=stage, state=state, seq=seq, **fields
        )
        return envelope, event

    return write


@pytest.fixture(scope="session")
def emit(record, publish):
    """Record, then publish the same event under the same id, as the outbox relay does."""

    async def send(job_id: uuid.UUID, state: JobState, **kw) -> Envelope:
        envelope, event = await record(job_id, state, **kw)
        await publish(event, envelope)
        return envelope

    return send
