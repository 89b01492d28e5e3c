"""Bearer-token authentication: verify the JWT, upsert the user on first sight, apply the
users table's role and disabled flag (an admin-set role overrides the token's admin claim)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from mxw_shared.auth import AuthError, JwksVerifier, Principal
from mxw_shared.db import Pool
from mxw_shared.problems import Problem

# auto_error=False: a missing token becomes our own 401 problem, not FastAPI's 403.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description="JWT from the OIDC provider (or the local dev issuer).",
)


@dataclass(frozen=True)
class CurrentUser:
    sub: str
    is_admin: bool
    name: str | None
    email: str | None


def unauthorized(detail: str, *, invalid_token: bool) -> Problem:
    challenge = 'Bearer realm="mxwhisper"'
    if invalid_token:
        safe = detail.replace('"', "'")
        challenge += f', error="invalid_token", error_description="{safe}"'
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


async def authenticate(
    credentials: HTTPAuthorizationCredentials | None, verifier: JwksVerifier, pool: Pool
) -> CurrentUser:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("a bearer token is required", invalid_token=False)
    try:
        principal = await verifier.verify(credentials.credentials)
    except AuthError as exc:
        raise unauthorized(str(exc), invalid_token=True) from exc
    role, disabled, role_set_by_admin = await upsert_user(pool, principal)
    if disabled:
        raise Problem(403, "Forbidden", "this account is disabled")
    return CurrentUser(
        sub=principal.sub,
        is_admin=effective_admin(principal.is_admin, role, role_set_by_admin),
        name=principal.name,
        email=principal.email,
    )


def effective_admin(claim_admin: bool, role: str, role_set_by_admin: bool) -> bool:
    """A role an admin set (PATCH /admin/users/{id}) is final, so a claim admin can be demoted
    in the database; until then the token's admin claim or the stored role grants admin."""
    if role_set_by_admin:
        return role == "admin"
    return claim_admin or role == "admin"


async def upsert_user(pool: Pool, principal: Principal) -> tuple[str, bool, bool]:
    """Create the user on first sight; refresh name, email and last_seen_at at most once a
    minute so that every request does not write. Returns (role, disabled, role set by an
    admin)."""
    row = await pool.fetchrow(
        """INSERT INTO users (id, name, email) VALUES ($1, $2, $3)
           ON CONFLICT (id) DO UPDATE SET
               name = coalesce(excluded.name, users.name),
               email = coalesce(excluded.email, users.email),
               last_seen_at = now()
           WHERE users.last_seen_at < now() - interval '60 seconds'
              OR users.name IS DISTINCT FROM coalesce(excluded.name, users.name)
              OR users.email IS DISTINCT FROM coalesce(excluded.email, users.email)
           RETURNING role, disabled, role_set_by_admin""",
        principal.sub,
        principal.name,
        principal.email,
    )
    if row is None:  # already known and fresh: nothing was written
        row = await pool.fetchrow(
            "SELECT role, disabled, role_set_by_admin FROM users WHERE id = $1", principal.sub
        )
        assert row is not None
    return str(row["role"]), bool(row["disabled"]), bool(row["role_set_by_admin"])
