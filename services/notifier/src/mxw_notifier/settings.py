from mxw_shared.settings import CommonSettings
from mxw_shared.webhook_secrets import WebhookSecretSettings
from pydantic import Field


class NotifierSettings(CommonSettings, WebhookSecretSettings):
    service_name: str = "notifier"
    port: int = 8001

    # A fetch returns after at most this long even with little data: live events wait for
    # it (aiokafka's default, 500 ms, suits batch consumers, not a live feed).
    kafka_fetch_max_wait_ms: int = Field(default=20, ge=0)

    # ---- Feeds (WebSocket, SSE) ----
    # Undelivered events per feed before it coalesces to the latest event of each job; a
    # feed still over it afterwards, or whose oldest undelivered event waited longer than
    # max_behind_s, is closed (4408) so it cannot hold back the fan-out to everyone else.
    connection_queue_size: int = Field(default=256, ge=1)
    max_behind_s: float = Field(default=30.0, gt=0)
    # WebSocket protocol pings keep idle connections open through proxies and detect dead
    # peers; a peer that does not answer within the timeout is disconnected.
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    # Kernel send buffer of each connection (SO_SNDBUF on the listening socket, inherited by
    # every accepted one); None keeps the kernel's autotuning (up to 4 MiB a connection on
    # Linux). A bound caps kernel memory per client and how much a stalled client absorbs
    # before it counts as slow.
    send_buffer_bytes: int | None = Field(default=None, ge=4096)
    # Open feeds (WebSocket and SSE together) per user and replica.
    max_connections_per_user: int = Field(default=20, ge=1)
    # How long the handler waits for a stuck client to take its close frame.
    close_timeout_s: float = 5.0
    # Jobs one `WS /ws/jobs?resume=` may name.
    max_resume_jobs: int = Field(default=500, ge=1)
    # SSE: a comment line this often keeps proxies from timing an idle stream out; the
    # reconnection delay suggested to EventSource.
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    sse_retry_ms: int = Field(default=3000, ge=0)
    # Origins whose pages may read the SSE feed (CORS). Tokens travel as bearer tokens, never
    # as cookies, so any origin is safe by default: a page cannot use a token it lacks.
    sse_cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    # Job owners remembered per replica (owners never change; bounds the lookups).
    owner_cache_size: int = Field(default=50_000, ge=1)

    # ---- Webhooks ----
    # One consumer group for the replicas together: each terminal job.status creates its
    # deliveries once, and events published while every replica was down are not lost.
    webhook_group_id: str = "notifier-webhooks"
    webhook_poll_interval_s: float = Field(default=1.0, gt=0)
    webhook_concurrency: int = Field(default=16, ge=1)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # Attempts per event; between them base * 2^(n-1) seconds (± 20 %), at most max.
    webhook_max_attempts: int = Field(default=10, ge=1)
    webhook_backoff_base_s: float = Field(default=5.0, ge=0)
    webhook_backoff_max_s: float = Field(default=3600.0, ge=0)
    # An endpoint is disabled after this many failed attempts in a row that span at least
    # webhook_disable_after_s (sustained failure, not one bad minute).
    webhook_disable_after_failures: int = Field(default=20, ge=1)
    webhook_disable_after_s: float = Field(default=24 * 3600.0, ge=0)
    # A claimed delivery is retried by another replica if its worker vanished for this long.
    webhook_lease_s: float = Field(default=60.0, gt=0)
    # Private, loopback, link-local, multicast and reserved targets are refused unless
    # webhook_allow_private, or the address lies in webhook_allowed_networks (CIDR list).
    # The gateway reads the same two variables when endpoints are registered.
    webhook_allow_private: bool = False
    webhook_allowed_networks: list[str] = Field(default_factory=list)
    webhook_response_excerpt_chars: int = Field(default=500, ge=0)
