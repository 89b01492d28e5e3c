"""Admin endpoints against the real Postgres and broker."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from mxw_shared import topics
from mxw_shared.contracts import Envelope, TranscriptReady


async def test_admins_manage_users_and_others_cannot(client, token):
    admin, user = token("boss", admin=True), token("worker")
    assert (await client.get("/jobs", headers=user)).status_code == 200  # seen: now a user row
    assert (await client.get("/admin/users", headers=user)).status_code == 403
    assert (
        await client.patch("/admin/users/worker", headers=user, json={"role": "admin"})
    ).status_code == 403

    seen = (await client.get("/admin/users/worker", headers=admin)).json()
    assert (seen["role"], seen["disabled"]) == ("user", False)
    promoted = await client.patch("/admin/users/worker", headers=admin, json={"role": "admin"})
    assert promoted.json()["role"] == "admin"
    assert (await client.get("/admin/users", headers=user)).status_code == 200  # role from table

    disabled = await client.patch("/admin/users/worker", headers=admin, json={"disabled": True})
    assert disabled.json()["disabled"] is True
    assert (await client.get("/jobs", headers=user)).status_code == 403
    await client.patch(
        "/admin/users/worker", headers=admin, json={"disabled": False, "role": "user"}
    )
    assert (await client.get("/jobs", headers=user)).status_code == 200

    assert (
        await client.patch("/admin/users/boss", headers=admin, json={"disabled": True})
    ).status_code == 409
    assert (await client.get("/admin/users/nobody-at-all", headers=admin)).status_code == 404
    assert (
        await client.patch("/admin/users/worker", headers=admin, json={"role": "god"})
    ).status_code == 422


async def test_system_view_counts_jobs_lag_and_dead_letters(client, token, upload_short):
    admin = token("boss", admin=True)
    await upload_short(client, token("sys-user"))
    # The upload's audio.uploaded leaves through the outbox relay: wait until it is out.
    deadline = time.monotonic() + 30
    while True:
        response = await client.get("/admin/system", headers=admin)
        assert response.status_code == 200, response.text
        view = response.json()
        waiting = {lag["topic"]: lag["lag"] for lag in view["consumer_lag"]}
        if waiting.get(topics.AUDIO_UPLOADED) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert view["jobs_by_state"]["queued"] >= 1
    assert set(view["jobs_by_state"]) >= {"queued", "running", "done", "failed", "cancelled"}
    lags = {lag["topic"]: lag for lag in view["consumer_lag"]}
    assert set(lags) == {
        topics.AUDIO_UPLOADED,
        topics.TRANSCRIPT_READY,
        topics.TRANSCRIPT_EDITED,
        topics.CHUNKS_READY,
    }
    # No transcriber consumes in this test: the upload's audio.uploaded is still waiting
    # (counted in the lag where the group has committed before, in waiting either way).
    uploaded = lags[topics.AUDIO_UPLOADED]
    assert uploaded["waiting"] >= 1
    assert uploaded["waiting"] >= uploaded["lag"] >= 0
    assert uploaded["end_offset"] == sum(p["log_end_offset"] for p in uploaded["partitions"])
    assert (await client.get("/admin/system", headers=token("sys-user"))).status_code == 403


async def dead_letter(kafka_producer, event: TranscriptReady, error: str) -> Envelope:
    """A record as StageRunner dead-letters it: original headers plus x_* headers."""
    envelope = Envelope.for_event(event, source="transcriber")
    headers = {
        **envelope.to_headers(),
        "x_error": error,
        "x_consumer": "chunker",
        "x_attempts": "3",
        "x_original_topic": topics.TRANSCRIPT_READY,
    }
    await kafka_producer.send_and_wait(
        topics.dlq(topics.TRANSCRIPT_READY),
        value=event.model_dump_json().encode(),
        key=str(event.job_id).encode(),
        headers=[(k, v.encode()) for k, v in headers.items()],
    )
    return envelope


async def find(client, admin, event_id: str) -> dict:
    letters = (
        await client.get("/admin/dead-letters", headers=admin, params={"limit": 1000})
    ).json()
    return next(d for d in letters if d["event_id"] == event_id)


async def test_dead_letters_are_listed_and_replayed(
    client, token, db, kafka_producer, read_topic, upload_short
):
    admin = token("boss", admin=True)
    # 1. A job that failed at the chunk stage: replay reprocesses it from there.
    upload = await upload_short(client, token("dl-user"))
    failed_job = uuid.UUID(upload.json()["id"])
    await db.execute(
        "INSERT INTO transcripts (job_id, duration_s, model, text)"
        " VALUES ($1, 3.4, 'tiny.en', 'x')",
        failed_job,
    )
    for stage, state in (("transcribe", "done"), ("chunk", "failed")):
        await db.execute(
            "INSERT INTO job_stages (job_id, stage, state, error) VALUES ($1, $2, $3, 'boom')",
            failed_job,
            stage,
            state,
        )
    sent = await dead_letter(
        kafka_producer,
        TranscriptReady(
            job_id=failed_job, owner_id="dl-user", segment_count=0, duration_s=3.4, model="tiny.en"
        ),
        "ValueError: boom",
    )
    listed = await find(client, admin, sent.id)
    assert (listed["original_topic"], listed["error"], listed["attempts"], listed["job_id"]) == (
        topics.TRANSCRIPT_READY,
        "ValueError: boom",
        3,
        str(failed_job),
    )
    replayed = await client.post(f"/admin/dead-letters/{listed['id']}/replay", headers=admin)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["action"] == "reprocessed"
    assert replayed.json()["job"]["state"] == "running"
    events = await read_topic(topics.TRANSCRIPT_READY, failed_job)
    assert events[-1][1]["generation"] == 1

    # 2. An event for a job nobody knows: published again under a new id, x_* headers gone.
    stray = uuid.uuid4()
    sent = await dead_letter(
        kafka_producer,
        TranscriptReady(job_id=stray, owner_id="x", segment_count=0, duration_s=1, model="tiny.en"),
        f"unknown job {stray}",
    )
    listed = await find(client, admin, sent.id)
    replayed = (
        await client.post(f"/admin/dead-letters/{listed['id']}/replay", headers=admin)
    ).json()
    assert replayed["action"] == "republished"
    ((headers, body),) = await read_topic(topics.TRANSCRIPT_READY, stray)
    assert headers["ce_id"] == replayed["event_id"] != sent.id
    assert headers["x_replay_of"] == sent.id
    assert not {"x_error", "x_attempts", "x_consumer"} & set(headers)
    assert body["job_id"] == str(stray)

    assert (
        await client.post("/admin/dead-letters/transcript.ready.dlq:0:999999/replay", headers=admin)
    ).status_code == 404
    assert (
        await client.post("/admin/dead-letters/not-an-id/replay", headers=admin)
    ).status_code == 422
    assert (await client.get("/admin/dead-letters", headers=token("dl-user"))).status_code == 403


async def test_l10_an_admin_from_the_token_claim_can_be_demoted_in_the_database(client, token):
    boss, claimed = token("boss", admin=True), token("l10-claimed", admin=True)
    # The identity provider's claim makes an admin; the table's role is still "user".
    assert (await client.get("/admin/users", headers=claimed)).status_code == 200
    seen = (await client.get("/admin/users/l10-claimed", headers=boss)).json()
    assert (seen["role"], seen["role_set_by_admin"]) == ("user", False)
    # Admins cannot demote themselves, claim or not.
    refused = await client.patch("/admin/users/l10-claimed", headers=claimed, json={"role": "user"})
    assert refused.status_code == 409

    demoted = await client.patch("/admin/users/l10-claimed", headers=boss, json={"role": "user"})
    assert demoted.status_code == 200, demoted.text
    assert (demoted.json()["role"], demoted.json()["role_set_by_admin"]) == ("user", True)
    # The same token, still carrying the claim: the role an admin set wins.
    assert (await client.get("/admin/users", headers=claimed)).status_code == 403
    assert (await client.get("/jobs", headers=claimed)).status_code == 200  # still a user
    # A later change of anything else keeps the decision.
    await client.patch("/admin/users/l10-claimed", headers=boss, json={"disabled": False})
    assert (await client.get("/admin/users", headers=claimed)).status_code == 403

    restored = await client.patch("/admin/users/l10-claimed", headers=boss, json={"role": "admin"})
    assert restored.json()["role"] == "admin"
    assert (await client.get("/admin/users", headers=claimed)).status_code == 200


async def test_a_dead_letter_the_broker_does_not_hand_over_in_time_is_not_called_missing(
    client, token, kafka_producer, infra
):
    """One fetch can come back empty on a busy broker: reading a dead letter goes on until
    its deadline, and running out of time is "try again", never "no such dead letter"."""
    from mxw_gateway.admin import kafka as gateway_kafka
    from mxw_gateway.settings import GatewaySettings

    stray = uuid.uuid4()
    sent = await dead_letter(
        kafka_producer,
        TranscriptReady(job_id=stray, owner_id="x", segment_count=0, duration_s=1, model="tiny.en"),
        "ValueError: slow",
    )
    listed = await find(client, token("boss", admin=True), sent.id)
    topic, partition, offset = listed["id"].rsplit(":", 2)
    settings = infra.settings(GatewaySettings, "gateway")

    record = await gateway_kafka.read_one(settings, topic, int(partition), int(offset))
    assert record is not None
    assert record.id == listed["id"]
    with pytest.raises(gateway_kafka.BrokerTimeout):
        await gateway_kafka.read_one(settings, topic, int(partition), int(offset), timeout_s=0)
    # An offset the partition does not hold is missing (once its last batch is read).
    assert await gateway_kafka.read_one(settings, topic, int(partition), 10**9) is None


async def test_every_dead_letter_of_one_batch_is_read_and_replayed(client, token, kafka_producer):
    """Dead letters written together land in one record batch, and the embedded broker's
    end offset then stops at that batch's first record: each must still be found by its id
    (a replay once answered 404 for one listed a moment before). All four go to partition 0:
    a batch is one partition's, and the topic may have several where an earlier module's
    producer created it before its declaration."""
    admin = token("boss", admin=True)
    events = [
        TranscriptReady(
            job_id=uuid.uuid4(), owner_id="x", segment_count=0, duration_s=1, model="tiny.en"
        )
        for _ in range(4)
    ]
    sent = [Envelope.for_event(event, source="transcriber") for event in events]
    pending = [
        await kafka_producer.send(  # not awaited one by one: the producer batches them
            topics.dlq(topics.TRANSCRIPT_READY),
            value=event.model_dump_json().encode(),
            key=str(event.job_id).encode(),
            partition=0,
            headers=[
                (k, v.encode())
                for k, v in {
                    **envelope.to_headers(),
                    "x_error": "ValueError: batched",
                    "x_consumer": "chunker",
                    "x_attempts": "3",
                    "x_original_topic": topics.TRANSCRIPT_READY,
                }.items()
            ],
        )
        for event, envelope in zip(events, sent, strict=True)
    ]
    metadata = await asyncio.gather(*pending)
    assert {m.partition for m in metadata} == {0}
    assert len({m.offset for m in metadata}) == 4
    for envelope in sent:
        listed = await find(client, admin, envelope.id)
        replayed = await client.post(f"/admin/dead-letters/{listed['id']}/replay", headers=admin)
        assert replayed.status_code == 200, (listed["id"], replayed.text)
        assert replayed.json()["action"] == "republished"
    # Past the last of them there is nothing.
    last = max(m.offset for m in metadata)
    missing = await client.post(
        f"/admin/dead-letters/{topics.dlq(topics.TRANSCRIPT_READY)}:0:{last + 1}/replay",
        headers=admin,
    )
    assert missing.status_code == 404, missing.text


async def test_admin_jobs_lists_everyone_s_jobs_as_jobs_all_does(client, token, upload_short):
    """The seed's GET /admin/jobs: every user's jobs, with the filters and paging of
    GET /jobs?all=true (same page for the same query)."""
    admin = token("boss", admin=True)
    mine = uuid.UUID((await upload_short(client, token("aj-ann"))).json()["id"])
    theirs = uuid.UUID((await upload_short(client, token("aj-bob"))).json()["id"])

    listed = await client.get("/admin/jobs", headers=admin, params={"limit": 1000})
    assert listed.status_code == 200, listed.text
    ids = {uuid.UUID(j["id"]) for j in listed.json()["items"]}
    assert {mine, theirs} <= ids

    query = {"filename": "short", "state": ["queued", "running", "done"], "limit": 2}
    admin_page = (await client.get("/admin/jobs", headers=admin, params=query)).json()
    all_page = (await client.get("/jobs", headers=admin, params={**query, "all": "true"})).json()
    assert admin_page == all_page
    assert len(admin_page["items"]) == 2

    assert (await client.get("/admin/jobs", headers=token("aj-ann"))).status_code == 403
    bad = await client.get("/admin/jobs", headers=admin, params={"limit": 0})
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
