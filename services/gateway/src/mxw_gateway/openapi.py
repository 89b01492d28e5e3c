"""The OpenAPI document states what every route can answer: problem+json for 401, 403, 422
and 429 wherever a token is required, so generated clients and schemathesis see the truth."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from mxw_shared.problems import PROBLEM_JSON

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
AUTHENTICATED_ERRORS = {
    "401": "Missing, expired or invalid bearer token.",
    "403": "Disabled user, or a route for admins only.",
    "422": "Invalid request.",
    "429": "Rate limit reached; see Retry-After.",
}


def document_errors(spec: dict[str, Any]) -> dict[str, Any]:
    spec.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            if operation.get("security"):
                for status, description in AUTHENTICATED_ERRORS.items():
                    responses.setdefault(status, {"description": description})
                if "requestBody" in operation:
                    responses.setdefault("400", {"description": "The body could not be parsed."})
                if "{" in path:  # a named resource: missing, or someone else's
                    responses.setdefault("404", {"description": "No such resource (or not yours)."})
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    # Every error is problem+json, whatever a route declared.
                    response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
    return spec


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
