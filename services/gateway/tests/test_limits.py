"""Limits on what a request may ask for: allowed Whisper models (L7), audio duration and
containers (M2), expensive operations (L6). Against the real Postgres and broker."""

from __future__ import annotations

import uuid

import pytest

from .test_reprocess import finish_stages

USER = "lena-limits"


@pytest.fixture(scope="module")
def headers(token) -> dict[str, str]:
    return token(USER)


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict = response.json()
    assert body["status"] == status
    return body


async def job_count(db) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM jobs WHERE owner_id = $1", USER)
    return count


@pytest.mark.parametrize(
    "model", ["/models/whisper-large", "Systran/faster-whisper-large-v3", "large-v3", "../tiny.en"]
)
async def test_l7_upload_naming_a_model_outside_the_allow_list_is_422(
    client, headers, short_ogg, db, model
):
    jobs = await job_count(db)
    response = await client.post(
        "/jobs",
        headers=headers,
        params={"force": "true"},
        files={"file": ("a.ogg", short_ogg, "audio/ogg")},
        data={"model": model},
    )
    body = assert_problem(response, 422)
    assert "is not available" in body["detail"]
    assert body["allowed_models"] == ["tiny.en", "base", "small"]
    assert await job_count(db) == jobs


async def test_l7_allowed_model_is_accepted(client, headers, short_ogg):
    response = await client.post(
        "/jobs",
        headers=headers,
        params={"force": "true"},
        files={"file": ("a.ogg", short_ogg, "audio/ogg")},
        data={"model": "base"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["options"]["model"] == "base"


async def test_l7_from_url_and_reprocess_check_the_model_too(client, headers, upload_short, db):
    response = await client.post(
        "/jobs/from-url",
        headers=headers,
        json={"url": "http://127.0.0.1:9/a.ogg", "options": {"model": "/etc"}},
    )
    assert "is not available" in assert_problem(response, 422)["detail"]

    uploaded = await upload_short(client, headers)
    job_id = uuid.UUID(uploaded.json()["id"])
    await finish_stages(db, job_id, states={"transcribe": "done", "chunk": "done", "embed": "done"})
    response = await client.post(
        f"/jobs/{job_id}/reprocess",
        headers=headers,
        json={"from": "transcribe", "options": {"model": "/home/someone/model"}},
    )
    assert "is not available" in assert_problem(response, 422)["detail"]
