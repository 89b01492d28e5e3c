"""FastAPI dependencies: the wired-up singletons of the app and the calling user."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from mxw_shared.auth import JwksVerifier
from mxw_shared.blobs import BlobStore
from mxw_shared.db import Pool
from mxw_shared.service import ServiceRuntime

from mxw_gateway.auth import CurrentUser, authenticate, bearer_scheme
from mxw_gateway.settings import GatewaySettings


def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


def get_pool(request: Request) -> Pool:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime.pool


def get_blob_store(request: Request) -> BlobStore:
    store: BlobStore = request.app.state.blob_store
    return store


def get_embedder_client(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.embedder_client
    return client


def get_verifier(request: Request) -> JwksVerifier:
    verifier: JwksVerifier = request.app.state.verifier
    return verifier


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
PoolDep = Annotated[Pool, Depends(get_pool)]
BlobStoreDep = Annotated[BlobStore, Depends(get_blob_store)]
EmbedderClientDep = Annotated[httpx.AsyncClient, Depends(get_embedder_client)]


async def get_current_user(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    verifier: Annotated[JwksVerifier, Depends(get_verifier)],
    pool: PoolDep,
) -> CurrentUser:
    return await authenticate(credentials, verifier, pool)


CurrentUserDep = Annotated[CurrentUser, Depends(get_current_user)]
