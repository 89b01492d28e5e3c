"""Every Postgres advisory lock the services take, named in one place so that no two uses
share a key by accident (the stage sweeper's lock once equalled the status-numbering one).

Postgres has two advisory key spaces that never overlap: a pair of 32-bit integers and one
64-bit integer. Pairs here are (namespace, key) with a namespace constant below; the 64-bit
keys are either a constant or `hashtextextended('<prefix>:<parts>', 0)` with a prefix below
(`text_key` builds that text), so the prefixes keep those apart.
"""

from __future__ import annotations

# ---- (namespace, key) pairs: pg_advisory_xact_lock(NAMESPACE, key) ----
OUTBOX_RELAY_LANE = 0x6D787701  # key: the outbox lane; one relay publishes a lane at a time
JOB_STATUS_SEQ = 0x6D787702  # key: hashtext(job id); numbering of one job's status events
STAGE_SWEEP = 0x6D787703  # key: the stage's index; one sweeper replica per stage and round

PAIR_NAMESPACES: dict[str, int] = {
    "OUTBOX_RELAY_LANE": OUTBOX_RELAY_LANE,
    "JOB_STATUS_SEQ": JOB_STATUS_SEQ,
    "STAGE_SWEEP": STAGE_SWEEP,
}

# ---- 64-bit keys ----
MIGRATIONS = 0x6D7877  # session lock while the schema migrates ("mxw")

# Prefixes of text keys: pg_advisory_xact_lock(hashtextextended(text_key(PREFIX, ...), 0)).
UPLOAD_CONTENT = "upload"  # owner, sha256: one owner's uploads of the same audio (dedupe)
WEBHOOKS_OF_USER = "webhooks"  # user: the per-user endpoint limit under concurrency
BLOB_CONTENT = "blob"  # sha256: a stored file's upload commit against its deletion

TEXT_KEY_PREFIXES: dict[str, str] = {
    "UPLOAD_CONTENT": UPLOAD_CONTENT,
    "WEBHOOKS_OF_USER": WEBHOOKS_OF_USER,
    "BLOB_CONTENT": BLOB_CONTENT,
}


def text_key(prefix: str, *parts: str) -> str:
    """The text whose hashtextextended(…, 0) is the 64-bit lock key: `<prefix>:<parts>`."""
    if prefix not in TEXT_KEY_PREFIXES.values():
        raise ValueError(f"unregistered advisory lock prefix {prefix!r}")
    return ":".join((prefix, *parts))
