"""Numbers beyond the columns they are compared with, and control characters in text that
reaches SQL: 422 problem+json, never a 500 from the database."""

from __future__ import annotations

import uuid

import pytest

PROBLEM = "application/problem+json"
TOO_BIG = str(2**63)  # one past bigint
BIGGEST = str(2**63 - 1)


def assert_422(response) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_l2_integers_beyond_their_columns_are_422(client, token):
    user, admin = token("l2-user"), token("l2-admin", admin=True)
    webhook = uuid.uuid4()
    assert_422(await client.get(f"/search/similar/{TOO_BIG}", headers=user))
    assert_422(await client.get(f"/webhooks/{webhook}/attempts?before={TOO_BIG}", headers=user))
    assert_422(await client.get(f"/admin/users?offset={TOO_BIG}", headers=admin))
    for bad in (f"audio.uploaded.dlq:{2**31}:0", f"audio.uploaded.dlq:0:{TOO_BIG}"):
        assert_422(await client.post(f"/admin/dead-letters/{bad}/replay", headers=admin))
    # The largest value a column holds is a valid request that finds nothing.
    assert (await client.get(f"/search/similar/{BIGGEST}", headers=user)).status_code == 404
    missing = await client.get(f"/webhooks/{webhook}/attempts?before={BIGGEST}", headers=user)
    assert missing.status_code == 404
    page = await client.get(f"/admin/users?offset={BIGGEST}", headers=admin)
    assert page.status_code == 200
    assert page.json() == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("initial_prompt", "Foxes\x00and dogs"), ("model", "tiny.en\x00"), ("model", "tiny\x1b[2J")],
)
async def test_l3_control_characters_in_job_options_are_422(
    client, token, db, upload_short, field, value
):
    response = await client.post(
        "/jobs",
        headers=token("l3-options"),
        data={field: value},
        files={"file": ("a.ogg", b"OggS" + b"\x00" * 64, "audio/ogg")},
    )
    assert_422(response)
    assert field in response.json()["detail"]
    assert "control characters" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = 'l3-options'") == 0


async def test_l3_control_characters_in_path_parameters_are_422(client, token):
    admin = token("l3-admin", admin=True)
    assert_422(await client.get("/admin/users/a%00b", headers=admin))
    assert_422(await client.patch("/admin/users/a%00b", headers=admin, json={"role": "user"}))
    assert_422(await client.post("/admin/dead-letters/a%00.dlq:0:0/replay", headers=admin))
    assert (await client.get("/admin/users/nobody-l3", headers=admin)).status_code == 404


async def test_l3_control_characters_in_search_text_are_422(client, token):
    user = token("l3-search")
    assert_422(await client.post("/search", headers=user, json={"q": "a\x00b", "mode": "text"}))
    assert_422(await client.get("/search", headers=user, params={"q": "a\x00b", "mode": "text"}))
    assert_422(await client.get("/search", headers=user, params={"q": "a", "language": "e\x00"}))
    assert_422(await client.get("/jobs", headers=user, params={"filename": "a\x00"}))
    fine = await client.post("/search", headers=user, json={"q": "foxes\tdogs", "mode": "text"})
    assert fine.status_code == 200, fine.text
