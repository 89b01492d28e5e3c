from pathlib import Path

from mxw_shared.contracts import WHISPER_MODELS
from mxw_shared.settings import CommonSettings
from mxw_shared.webhook_secrets import WebhookSecretSettings
from pydantic import Field, SecretStr, field_validator, model_validator

RATE_LIMITS: dict[str, tuple[float, int]] = {
    "uploads": (60.0, 20),
    "search": (600.0, 60),
    "reprocess": (10.0, 5),
    "webhook_tests": (6.0, 3),
}


class GatewaySettings(CommonSettings, WebhookSecretSettings):
    service_name: str = "gateway"
    port: int = 8000

    # Uploads stream to disk; this caps one file (the multipart envelope gets a little more).
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)
    max_form_field_bytes: int = 64 * 1024
    max_filename_chars: int = 200
    # Clean-up of uploads that never became jobs (a gateway killed mid-upload).
    blob_janitor_interval_s: float = 3600.0
    orphan_blob_after_s: float = 3600.0
    abandoned_part_after_s: float = 30.0  # younger part files may not hold their lock yet
    # s3://bucket/prefix: uploads are staged in blob_root, then stored in S3, and jobs name
    # the s3:// object (nodes that share no disk). Endpoint/credentials: AWS_* environment.
    blob_store_url: str | None = None

    # Query vectors come from the embedder's OpenAI-compatible endpoint.
    embedder_url: str = "http://127.0.0.1:8004"
    embedder_service_token: SecretStr | None = None
    embedder_model: str = "all-MiniLM-L6-v2"
    embedder_timeout_s: float = 10.0
    embedding_dimensions: int = 384

    # Prefix of links handed to clients (audio, job resources); empty: relative links.
    public_base_url: str = ""

    search_default_limit: int = Field(default=10, ge=1, le=100)
    search_max_limit: int = Field(default=100, ge=1, le=1000)
    # Each ranked list (vector, words) contributes this many candidates per result wanted.
    # 10 (not 5): recall@10 0.886 -> 0.947 for an owner of 10 % of 100k rows; ef_search
    # 400 adds little (0.953) and makes the planner leave HNSW on tables up to ~10k rows
    # (docs/benchmarks.md, "Recall against candidates and ef_search").
    search_candidates_per_result: int = 10
    search_min_candidates: int = 50
    search_rrf_k: int = 60
    search_hnsw_ef_search: int = 200

    # Set by the local stack: serve the dev issuer's JWKS at /.well-known/jwks.json.
    dev_jwks_path: Path | None = None
    # The web page's unauthenticated "sign in as anyone" (POST /app/dev-sign-in): it mints
    # admin tokens for whoever reaches the gateway, so it exists only when this is set (the
    # local stack, `mxw up`, sets it) and the dev issuer's signing key lies beside
    # dev_jwks_path. Never in compose or a cluster.
    dev_sign_in: bool = False

    # ---- Web page (/app) ----
    # Where browsers reach the notifier's WebSocket feed (the local stack's by default).
    web_notifier_url: str = "http://127.0.0.1:8001"
    # OIDC sign-in (authorization code + PKCE, done in the page): the provider's issuer URL
    # (its /.well-known/openid-configuration is read) and the page's public client id.
    web_oidc_issuer: str | None = None
    web_oidc_client_id: str | None = None
    web_oidc_scopes: str = "openid profile email"

    # Browsers on these origins may call the API; credentials with "*" are refused.
    cors_origins: list[str] = Field(default_factory=list)
    cors_allow_credentials: bool = False
    # Per user and replica: (requests per minute, burst). Uploads (also from a URL and /v1),
    # search, reprocess (a whole re-transcription) and webhook tests; a name left out keeps
    # its default.
    rate_limits: dict[str, tuple[float, int]] = Field(default_factory=lambda: dict(RATE_LIMITS))

    @field_validator("rate_limits")
    @classmethod
    def _every_rate_limit(cls, value: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
        unknown = sorted(set(value) - set(RATE_LIMITS))
        if unknown:
            raise ValueError(f"unknown rate limits {unknown}; known: {sorted(RATE_LIMITS)}")
        return {**RATE_LIMITS, **value}

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> "GatewaySettings":
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError("CORS: a wildcard origin cannot be combined with credentials")
        return self

    # Per-user storage: the audio of all of a user's jobs (distinct files) may not exceed this;
    # an upload past it is refused with 413 "Storage quota exceeded". None: no quota.
    storage_quota_bytes: int | None = Field(default=20 * 1024**3, gt=0)

    jobs_default_page_size: int = 20
    jobs_max_page_size: int = 100

    # ---- OpenAI-compatible transcription API (/v1) ----
    # The Whisper models jobs may name (POST /jobs, from-url, reprocess: 422 otherwise), which
    # /v1/models lists and /v1/audio/transcriptions accepts. Static: the gateway does not load
    # models; keep it to what the transcriber allows (MXW_ALLOWED_MODELS; mxw_transcriber.
    # models: tiny.en and base ship as packages).
    openai_models: list[str] = Field(default_factory=lambda: list(WHISPER_MODELS))
    # "whisper-1" (OpenAI's name) maps to this model; None: the transcriber's default.
    openai_default_model: str | None = None
    # How long a request waits for its transcript before answering 202 with the job to poll
    # (at most 10 minutes: a held request costs a connection and a query each poll), and how
    # many requests of one user may wait at once per replica; more are answered 202 at once.
    openai_wait_s: float = Field(default=300.0, ge=0, le=600)
    openai_poll_interval_s: float = Field(default=1.0, gt=0)
    openai_max_waits_per_user: int = Field(default=2, ge=0)

    # ---- Ingest from a URL (POST /jobs/from-url) ----
    # Private, loopback, link-local, multicast and reserved targets are refused unless
    # ingest_allow_private, or the address lies in ingest_allowed_networks (CIDR list).
    ingest_allow_private: bool = False
    ingest_allowed_networks: list[str] = Field(default_factory=list)
    # None: the upload limit (max_upload_bytes).
    ingest_max_bytes: int | None = Field(default=None, gt=0)
    # The whole download (every redirect included) must finish within this.
    ingest_timeout_s: float = Field(default=300.0, gt=0)
    ingest_connect_timeout_s: float = Field(default=10.0, gt=0)
    # Each hop's DNS lookup (a slow resolver must not hold the request for the whole timeout).
    ingest_resolve_timeout_s: float = Field(default=10.0, gt=0)
    ingest_max_redirects: int = Field(default=5, ge=0)
    ingest_max_url_chars: int = 2048

    # ---- Webhook endpoints (/webhooks; the notifier makes the deliveries) ----
    # The secret key settings come with WebhookSecretSettings: the gateway seals, the
    # notifier opens. Private, loopback, link-local, multicast and reserved targets are
    # refused unless webhook_allow_private, or the address lies in webhook_allowed_networks
    # (CIDR list): the notifier reads the same two variables and checks again at delivery.
    webhook_allow_private: bool = False
    webhook_allowed_networks: list[str] = Field(default_factory=list)
    webhook_max_endpoints_per_user: int = Field(default=20, ge=1)
    webhook_max_url_chars: int = Field(default=2048, ge=16)
    # After a rotation the previous secret signs too (a second signature) for this long,
    # so receivers can switch without losing a delivery.
    webhook_secret_rotation_grace_s: float = Field(default=24 * 3600.0, ge=0)
    webhook_resolve_timeout_s: float = Field(default=5.0, gt=0)
