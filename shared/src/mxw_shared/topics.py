"""Kafka topics in one place: their names and their configuration. Every event of one job is
keyed by its job id.

`topic_specs` declares every topic and dead-letter topic with its partitions, replication
factor and topic-level configuration; `mxw_shared.kafka.ensure_topics` applies it to the
broker (tansu or Apache Kafka) and tests/deploy checks the Strimzi `KafkaTopic`s against it.
A deployment chooses partitions and replication (MXW_KAFKA_PARTITIONS,
MXW_KAFKA_REPLICATION_FACTOR); the rest follows from them or is fixed here.

No topic is compacted (cleanup.policy=delete everywhere), although every record is keyed by
its job id: each record is an event, not the latest state of its job. A stage topic's
records are work still to do (compaction could drop a job's earlier run that a lagging stage
has yet to do), job.status carries every transition of a job and outside consumers and
webhooks read each one (the notifier's feed history lives in Postgres, job_events, not on the
topic), and a dead-letter topic must keep every failed record. Compaction without tombstones
would also keep a record per job for ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

AUDIO_UPLOADED: Final = "audio.uploaded"
TRANSCRIPT_READY: Final = "transcript.ready"
TRANSCRIPT_EDITED: Final = "transcript.edited"
SPEAKERS_READY: Final = "speakers.ready"
CHUNKS_READY: Final = "chunks.ready"
EMBEDDINGS_READY: Final = "embeddings.ready"
JOB_STATUS: Final = "job.status"

PIPELINE_TOPICS: Final = (
    AUDIO_UPLOADED,
    TRANSCRIPT_READY,
    TRANSCRIPT_EDITED,
    SPEAKERS_READY,
    CHUNKS_READY,
    EMBEDDINGS_READY,
)
ALL_TOPICS: Final = (*PIPELINE_TOPICS, JOB_STATUS)

DAY_MS: Final = 24 * 3600 * 1000
# A week: longer than any outage a stage is expected to sit out with its work waiting (the
# stage sweepers re-send from Postgres what was lost anyway).
EVENT_RETENTION_MS: Final = 7 * DAY_MS
# Dead letters are read by hand (mxw dlq list / replay): a month to get to them.
DLQ_RETENTION_MS: Final = 30 * DAY_MS


def dlq(topic: str) -> str:
    """The dead-letter topic of `topic`: where events go after their last failed attempt."""
    return f"{topic}.dlq"


def all_topics_with_dlq() -> list[str]:
    return [*ALL_TOPICS, *(dlq(t) for t in ALL_TOPICS)]


@dataclass(frozen=True)
class TopicSpec:
    """One topic as it must be on the broker. `config` holds topic-level settings, values as
    the broker reports them (strings)."""

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]

    @property
    def is_dlq(self) -> bool:
        return self.name.endswith(".dlq")


def min_insync_replicas(replication_factor: int) -> int:
    """One replica fewer than the replication factor (at least one): with acks=all an
    acknowledged event is on that many brokers, and one broker may be down without stopping
    writes (replication 3: min.insync.replicas 2)."""
    return max(1, replication_factor - 1)


def topic_specs(partitions: int, replication_factor: int) -> list[TopicSpec]:
    """Every topic and dead-letter topic. Pipeline topics and job.status get `partitions`
    (the most replicas of a stage that can consume at once); dead-letter topics get one:
    they are read by hand, in order."""
    if partitions < 1:
        raise ValueError(f"topics need at least 1 partition, got {partitions}")
    if replication_factor < 1:
        raise ValueError(
            f"topics need a replication factor of at least 1, got {replication_factor}"
        )

    def spec(name: str, count: int, retention_ms: int) -> TopicSpec:
        config = {
            "cleanup.policy": "delete",
            "retention.ms": str(retention_ms),
            "min.insync.replicas": str(min_insync_replicas(replication_factor)),
        }
        return TopicSpec(name, count, replication_factor, config)

    return [
        *(spec(t, partitions, EVENT_RETENTION_MS) for t in ALL_TOPICS),
        *(spec(dlq(t), 1, DLQ_RETENTION_MS) for t in ALL_TOPICS),
    ]
