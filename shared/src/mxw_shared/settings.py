"""Settings shared by every service, read from `MXW_…` environment variables."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """What every service needs: database, broker, blobs, auth, its own HTTP port."""

    model_config = SettingsConfigDict(env_prefix="MXW_", extra="ignore")

    service_name: str = "mxwhisper"
    instance_id: str = Field(default_factory=socket.gethostname)
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"

    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:54329/mxwhisper")
    db_pool_min: int = 1
    db_pool_max: int = 10

    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    # Idempotent producer: on for Apache Kafka / Strimzi; the embedded tansu broker answers
    # InitProducerId with an error, so the local stack turns it off (consumers de-duplicate).
    kafka_idempotent_producer: bool = True
    kafka_partitions: int = 3
    kafka_replication_factor: int = 1
    # Stage consumers keep polling (the busy partition paused) while work runs, so this
    # bounds a stuck poll loop, not the length of a job: Kafka's usual 5 minutes.
    kafka_max_poll_interval_ms: int = 300_000
    # Who this service is to the broker (docs/deploy.md, "Kafka security"): PLAINTEXT for the
    # local stack's loopback broker; elsewhere SASL with this service's own principal (one per
    # service, its ACLs in mxw_shared.kafka_access), SASL_SSL where the network is not
    # private. The password comes from MXW_KAFKA_PASSWORD or, for secrets mounted as files,
    # MXW_KAFKA_PASSWORD_FILE; it is never logged.
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    kafka_password_file: Path | None = None
    # CA bundle that signed the brokers' certificates (SASL_SSL); unset: the system's CAs.
    kafka_ssl_cafile: Path | None = None
    # Whether the service creates missing topics at start. On a secured cluster topics are
    # created by the set-up step (python -m mxw_shared.kafka_setup, Strimzi KafkaTopics) and
    # the services' principals hold no Create permission: turn this off there.
    kafka_create_topics: bool = True

    blob_root: Path = Path(".data/blobs")
    # Longest audio accepted (decoded, 16 kHz float32: ~230 MB of memory per hour in the
    # transcriber): checked by the gateway's probe and again before the transcriber decodes.
    max_audio_seconds: float = Field(default=6 * 3600.0, gt=0)

    # Auth: any OIDC provider's JWKS (http(s)://) or the local dev issuer's file (file://).
    auth_jwks_url: str = "file://.data/auth/jwks.json"
    auth_issuer: str = "mxwhisper-dev"
    auth_audience: str = "mxwhisper"
    auth_algorithms: list[str] = ["RS256", "ES256"]
    auth_admin_claim: str = "groups"
    auth_admin_value: str = "admin"
    auth_leeway_s: int = 30
    # Services that take user tokens directly (notifier feeds, embedder API) re-read
    # users.disabled after this long: a disabled user loses access (open feeds close) within
    # it. At most a minute.
    user_access_cache_s: float = Field(default=60.0, ge=0, le=60)

    # Events: attempts before a message goes to its dead-letter topic.
    max_attempts: int = 3
    retry_backoff_s: float = 1.0
    # A record whose handling raises something other than an outage (database or broker
    # unreachable) is tried this often, then dead-lettered and its job failed; outages are
    # retried until they end.
    max_handler_attempts: int = Field(default=3, ge=1)
    # Largest record a consumer accepts (events carry ids and URIs, a few KiB at most);
    # larger ones are dead-lettered, and every dead letter's body is cut to this size so
    # that it stays publishable under Kafka's 1 MiB record limit.
    max_event_bytes: int = Field(default=65_536, ge=1024, le=512 * 1024)
    outbox_poll_interval_s: float = 1.0
    lease_s: float = 60.0
    # Sweeper (every worker service, for its own stage): re-sends a stage's input when the
    # worker holding its lease stopped renewing it, or when nothing happened to the job for
    # `stuck_after_s` (its event was lost, e.g. an in-memory broker restarted). A stage whose
    # workers were lost `max_stage_starts` times in one run (a crash loop on this audio)
    # fails with that reason instead. sweep_interval_s = 0 turns the sweeper off.
    sweep_interval_s: float = 15.0
    stuck_after_s: float = 300.0
    max_stage_starts: int = 5
    sweep_window_s: float = 7 * 24 * 3600.0
    # Retention (shared/retention.py): each table is pruned by the service that writes it,
    # every retention_interval_s, in batches of retention_batch_rows. Days; 0 keeps for ever.
    retention_interval_s: float = Field(default=3600.0, gt=0)
    retention_batch_rows: int = Field(default=1000, ge=1)
    processed_events_retention_days: float = Field(default=30.0, ge=0)
    stage_sweeps_retention_days: float = Field(default=30.0, ge=0)
    job_events_retention_days: float = Field(default=90.0, ge=0)
    webhook_deliveries_retention_days: float = Field(default=30.0, ge=0)
    # Graceful shutdown: how long a stopping worker lets the job in hand finish before it
    # releases the job's lease for another replica.
    shutdown_grace_s: float = 30.0

    @property
    def dsn(self) -> str:
        return self.database_url.get_secret_value()

    def kafka_sasl_credentials(self) -> tuple[str, str]:
        """(username, password) of this service's Kafka principal; ValueError naming the
        missing setting when SASL is asked for without them."""
        protocol = self.kafka_security_protocol
        if not self.kafka_username:
            raise ValueError(f"MXW_KAFKA_SECURITY_PROTOCOL={protocol} needs MXW_KAFKA_USERNAME")
        if self.kafka_password is not None and self.kafka_password_file is not None:
            raise ValueError("set MXW_KAFKA_PASSWORD or MXW_KAFKA_PASSWORD_FILE, not both")
        if self.kafka_password is not None:
            return self.kafka_username, self.kafka_password.get_secret_value()
        if self.kafka_password_file is not None:
            try:
                password = self.kafka_password_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"MXW_KAFKA_PASSWORD_FILE {self.kafka_password_file}: {exc.strerror}"
                ) from exc
            if password:
                return self.kafka_username, password
            raise ValueError(f"MXW_KAFKA_PASSWORD_FILE {self.kafka_password_file} is empty")
        raise ValueError(
            f"MXW_KAFKA_SECURITY_PROTOCOL={protocol} needs MXW_KAFKA_PASSWORD"
            " or MXW_KAFKA_PASSWORD_FILE"
        )


class AudioSourceSettings(CommonSettings):
    """What a stage that reads a job's audio needs (mxw_shared.audio_source): the
    transcriber and the diarizer."""

    # Where s3:// audio lives (s3://bucket/prefix, the gateway's MXW_BLOB_STORE_URL); endpoint
    # and credentials from the standard AWS_* environment. Unset: s3:// URIs are refused.
    blob_store_url: str | None = None
    # Limits for http(s):// and s3:// audio sources (the timeout covers the whole download).
    download_max_bytes: int = 2 * 1024**3
    download_timeout_s: float = 600.0
    # http(s):// audio goes through the URL ingest's guard (mxw_shared.netguard): private,
    # loopback, link-local, multicast and reserved targets are refused unless
    # download_allow_private, or the address lies in download_allowed_networks (CIDR list).
    download_allow_private: bool = False
    download_allowed_networks: list[str] = Field(default_factory=list)
    download_max_redirects: int = Field(default=5, ge=0)
    download_connect_timeout_s: float = Field(default=10.0, gt=0)
    download_resolve_timeout_s: float = Field(default=10.0, gt=0)
    # Check the audio's bytes against the event's sha256 before transcribing.
    verify_sha256: bool = True
