"""Kafka topic names, in one place. Every event of one job is keyed by its job id."""

from typing import Final

AUDIO_UPLOADED: Final = "audio.uploaded"
TRANSCRIPT_READY: Final = "transcript.ready"
CHUNKS_READY: Final = "chunks.ready"
EMBEDDINGS_READY: Final = "embeddings.ready"
JOB_STATUS: Final = "job.status"

PIPELINE_TOPICS: Final = (AUDIO_UPLOADED, TRANSCRIPT_READY, CHUNKS_READY, EMBEDDINGS_READY)
ALL_TOPICS: Final = (*PIPELINE_TOPICS, JOB_STATUS)


def dlq(topic: str) -> str:
    """The dead-letter topic of `topic`: where events go after their last failed attempt."""
    return f"{topic}.dlq"


def all_topics_with_dlq() -> list[str]:
    return [*ALL_TOPICS, *(dlq(t) for t in ALL_TOPICS)]
