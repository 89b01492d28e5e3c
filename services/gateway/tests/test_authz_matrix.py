"""Every route of the gateway, called as anonymous, a disabled user, the owner, another user
and an admin: each gets the status its role allows. New routes are covered automatically;
a route that is neither job-scoped, admin-only nor per-user must be added to PUBLIC."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "audio"
SHORT = (FIXTURES / "short_en.ogg").read_bytes()
PUBLIC = {"/livez", "/readyz", "/metrics", "/.well-known/jwks.json"}
# Valid bodies where the route needs one, so that ownership (not validation) decides.
BODIES = {
    "/jobs/{job_id}/reprocess": {"from": "embed"},
    "/jobs/{job_id}/speakers/{label}": {"name": "Alice"},
    "/jobs/{job_id}/speakers/merge": {"from": "SPEAKER_02", "into": "SPEAKER_01"},
    "/jobs/{job_id}/segments/{idx}/speaker": {"speaker": "SPEAKER_02"},
    "/jobs/{job_id}/speakers/{label}/voice": {"profile_id": str(uuid.UUID(int=0)), "accept": True},
    "/voices": {"name": "Alice", "job_id": "{job_id}", "label": "SPEAKER_01"},
    "/voices/{profile_id}": {"name": "Alice"},
    "/vocabulary": {"terms": ["Siobhan"]},
    "/vocabulary/terms": {"term": "Siobhan"},
    "/jobs/{job_id}/segments/{index}": {"text": "corrected"},
    "/jobs/{job_id}/segments/{index}/split": {"offset": 1},
    "/jobs/{job_id}/segments/{index}/merge": {},
    "/jobs/{job_id}/transcript/revert": {"revision": 0},
}
# Operations on a job of the owner's named in the body rather than the path.
JOB_IN_BODY = {("POST", "/voices")}
# Voice profiles are personal: an admin is refused another user's job there, like any user.
PERSONAL = {("POST", "/voices"), ("POST", "/jobs/{job_id}/speakers/{label}/voice")}
# A transcript is corrected by its owner only: an admin reads it and its history, and is
# refused (403) a change.
OWNER_WRITES = {
    ("PATCH", "/jobs/{job_id}/segments/{index}"),
    ("POST", "/jobs/{job_id}/segments/{index}/split"),
    ("POST", "/jobs/{job_id}/segments/{index}/merge"),
    ("POST", "/jobs/{job_id}/transcript/revert"),
}
USERS = {"owner": "mx-owner", "other": "mx-other", "admin": "mx-admin", "disabled": "mx-off"}


@pytest.fixture(scope="module")
async def app_and_client(start_gateway):
    async with start_gateway() as client:
        yield client


async def routes(client) -> list[tuple[str, str]]:
    """Every operation the API documents (the OpenAPI document is generated from the app)."""
    spec = (await client.get("/openapi.json")).json()
    found = [
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        if path not in PUBLIC
        for method in operations
    ]
    # Deletes last: once the job is gone every later call would say 404.
    return sorted(found, key=lambda op: op[0] == "DELETE")


def fill(path: str, job_id: uuid.UUID, chunk_id: int) -> str:
    values = {
        "job_id": str(job_id),
        "chunk_id": str(chunk_id),
        "user_id": USERS["owner"],
        "dead_letter_id": "transcript.ready.dlq:0:999999999",
        "model": "base",
        "webhook_id": str(uuid.UUID(int=0)),  # nobody's: ownership is in test_webhooks.py
        "label": "SPEAKER_01",
        "idx": "0",
        "profile_id": str(uuid.UUID(int=0)),  # nobody's: ownership is in test_voices.py
        "term": "Siobhan",  # the caller's own list: scoping is in test_vocabulary.py
        "index": "0",
        "revision": "0",
    }
    return re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)


def kind(method: str, path: str) -> str:
    if path.startswith("/admin"):
        return "admin"
    if "{job_id}" in path or "{chunk_id}" in path or (method, path) in JOB_IN_BODY:
        return "job"  # a resource the owner has and nobody else sees
    return "user"


@pytest.fixture
async def setup(app_and_client, token, db):
    """A fresh job of the owner's for each identity: a pass may cancel or delete it."""
    client = app_and_client
    headers = {name: token(sub, admin=name == "admin") for name, sub in USERS.items()}
    for name in ("owner", "other", "admin", "disabled"):  # users are created on first sight
        seen = await client.get("/jobs", headers=headers[name])
        expected = {200, 403} if name == "disabled" else {200}  # disabled after the first pass
        assert seen.status_code in expected
    await db.execute("UPDATE users SET disabled = true WHERE id = $1", USERS["disabled"])
    upload = await client.post(
        "/jobs",
        headers=headers["owner"],
        params={"force": "true"},
        files={"file": ("a.ogg", SHORT, "application/octet-stream")},
    )
    assert upload.status_code == 202
    job_id = uuid.UUID(upload.json()["id"])
    chunk_id = await db.fetchval(
        "INSERT INTO chunks (job_id, owner_id, idx, text, start_s, end_s, method)"
        " VALUES ($1, $2, 0, 'owner text', 0, 1, 'local') RETURNING id",
        job_id,
        USERS["owner"],
    )
    return client, headers, job_id, chunk_id


async def call(
    client,
    method: str,
    template: str,
    path: str,
    headers: dict[str, str] | None,
    job_id: uuid.UUID,
):
    body = BODIES.get(template)
    if body is not None:
        body = {k: str(job_id) if v == "{job_id}" else v for k, v in body.items()}
    return await client.request(method, path, headers=headers or {}, json=body)


@pytest.mark.parametrize("who", ["anonymous", "disabled", "other", "owner", "admin"])
async def test_every_route_answers_by_role(setup, who):
    client, headers, job_id, chunk_id = setup
    table = await routes(client)
    assert len(table) >= 20, table
    wrong = []
    for method, template in table:
        path = fill(template, job_id, chunk_id)
        response = await call(
            client, method, template, path, None if who == "anonymous" else headers[who], job_id
        )
        status, scope = response.status_code, kind(method, template)
        if who == "anonymous":
            ok = status == 401
        elif who == "disabled":
            ok = status == 403
        elif scope == "admin":
            ok = status == 403 if who in ("owner", "other") else status not in (401, 403)
        elif scope == "job" and (
            who == "other" or (who == "admin" and (method, template) in PERSONAL)
        ):
            ok = status == 404
        elif who == "admin" and (method, template) in OWNER_WRITES:
            ok = status == 403
        else:
            ok = status not in (401, 403, 404) or (
                # no transcript/chunks yet is "not ready", never "not yours"
                status == 404 and "no job" not in response.text
            )
        if not ok:
            wrong.append((method, template, status, response.text[:120]))
    assert not wrong, wrong
