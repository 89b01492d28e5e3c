"""OpenAI-compatible embeddings API: POST /v1/embeddings, GET /v1/models.

The gateway calls it for query vectors with the shared service token; a user's JWT works
too, unless the account is disabled (users.disabled, re-read every user_access_cache_s).
Errors are problem+json like every other endpoint of the system.
"""

import hmac
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from mxw_shared.auth import AuthError, JwksVerifier
from mxw_shared.problems import Problem
from mxw_shared.user_access import UserAccess, UserDisabled
from pydantic import BaseModel, ConfigDict, Field

from mxw_embedder.batcher import MicroBatcher
from mxw_embedder.domain import InvalidInput, encode_base64, normalise_input, validate_inputs
from mxw_embedder.settings import EmbedderSettings

SERVICE_CALLER = "service"
_bearer = HTTPBearer(auto_error=False, description="A user JWT or the service token.")


class EmbeddingRequest(BaseModel):
    # Unknown OpenAI fields (e.g. `user`) are accepted and ignored, as OpenAI clients send them.
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="One text or a list of texts.")
    model: str | None = Field(default=None, description="Unset: the served model.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, description="If given, must be 384.")


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="floats, or base64 of little-endian float32 for encoding_format=base64"
    )


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "sentence-transformers"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def embeddings_router(
    settings: EmbedderSettings,
    get_batcher: Callable[[], MicroBatcher | None],
    get_access: Callable[[], UserAccess | None],
) -> APIRouter:
    verifier = JwksVerifier.from_settings(settings)
    service_token = (
        settings.service_token.get_secret_value().encode() if settings.service_token else None
    )

    async def caller(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        """`service` for the service token, else the JWT's subject."""
        if credentials is None or not credentials.credentials:
            raise _unauthorized("a bearer token is required")
        token = credentials.credentials
        if service_token is not None and hmac.compare_digest(token.encode(), service_token):
            return SERVICE_CALLER
        try:
            sub = (await verifier.verify(token)).sub
        except AuthError as exc:
            raise _unauthorized(str(exc)) from exc
        access = get_access()
        if access is None:
            raise Problem(503, "Starting", "the embedder is still starting")
        try:
            await access.check(sub)
        except UserDisabled as exc:
            raise Problem(403, "Forbidden", str(exc)) from exc
        return sub

    def loaded() -> MicroBatcher:
        batcher = get_batcher()
        if batcher is None:
            raise Problem(503, "Model not loaded", "the embedding model is still loading")
        return batcher

    router = APIRouter(prefix="/v1", tags=["embeddings"])

    @router.post("/embeddings", response_model=EmbeddingResponse)
    async def create_embeddings(
        request: EmbeddingRequest, _caller: Annotated[str, Depends(caller)]
    ) -> EmbeddingResponse:
        batcher = loaded()
        embedder = batcher.embedder
        if request.model is not None and not embedder.accepts(request.model):
            raise Problem(
                400,
                "Unknown model",
                f"model {request.model!r} is not served here; use {embedder.name!r}",
            )
        if request.dimensions is not None and request.dimensions != embedder.dimensions:
            raise Problem(
                400,
                "Unsupported dimensions",
                f"{embedder.name} gives {embedder.dimensions} dimensions, not {request.dimensions}",
            )
        texts = normalise_input(request.input)
        try:
            validate_inputs(
                texts, max_inputs=settings.max_batch_inputs, max_chars=settings.max_input_chars
            )
        except InvalidInput as exc:
            raise Problem(400, exc.title, exc.detail) from exc

        # Shares model calls with concurrent requests and the pipeline's chunks.
        vectors, token_counts = await batcher.embed_query(texts)
        tokens = sum(token_counts)
        data = [
            EmbeddingItem(
                index=i,
                embedding=encode_base64(v) if request.encoding_format == "base64" else v.tolist(),
            )
            for i, v in enumerate(vectors)
        ]
        return EmbeddingResponse(
            data=data,
            model=embedder.name,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    @router.get("/models", response_model=ModelList)
    async def list_models(_caller: Annotated[str, Depends(caller)]) -> ModelList:
        return ModelList(data=[ModelCard(id=loaded().embedder.name)])

    return router
