from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mxw_gateway.jobs.schemas import JobView


class UserView(BaseModel):
    id: str
    name: str | None
    email: str | None
    role: str
    role_set_by_admin: bool = Field(
        description="An admin set the role: it is final, the token's admin claim no longer "
        "counts. Otherwise the claim also makes the user an admin."
    )
    disabled: bool
    created_at: datetime
    last_seen_at: datetime
    job_count: int


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "admin"] | None = None
    disabled: bool | None = Field(default=None, description="A disabled user gets 403.")


class PartitionLagView(BaseModel):
    partition: int
    log_start_offset: int
    log_end_offset: int
    committed_offset: int | None = Field(
        description="The group's committed offset; null when it has committed none here."
    )
    lag: int | None = Field(
        description="log_end_offset - committed_offset, as Kafka's consumer-groups tool"
        " computes LAG; null without a committed offset (the tool prints -)."
    )


class ConsumerLag(BaseModel):
    """A stage's consumer group on its topic: what KEDA scales the stage on."""

    topic: str
    group: str
    lag: int = Field(
        description="Sum of the partitions' lag (Kafka's LAG column summed): partitions"
        " without a committed offset count nothing here, see waiting."
    )
    waiting: int = Field(
        description="Records the group has yet to read: the lag, plus every record still"
        " held on partitions without a committed offset (stage consumers start from the"
        " earliest)."
    )
    end_offset: int = Field(description="Sum of the partitions' log-end offsets.")
    committed: int = Field(description="Sum of the committed offsets (none counts 0).")
    partitions: list[PartitionLagView]


class SystemView(BaseModel):
    jobs_by_state: dict[str, int]
    consumer_lag: list[ConsumerLag]
    dead_letters: dict[str, int] = Field(description="Records held in each dead-letter topic.")


class DeadLetter(BaseModel):
    id: str = Field(description="topic:partition:offset — pass to replay.")
    topic: str
    original_topic: str | None
    job_id: str | None
    error: str | None
    consumer: str | None
    attempts: int | None
    event_id: str | None
    event_type: str | None
    time: datetime
    payload: str = Field(description="The record's value as received (UTF-8, lossy).")


class ReplayResult(BaseModel):
    dead_letter: str
    action: Literal["reprocessed", "republished"]
    event_id: str | None = Field(default=None, description="ce_id of the republished event.")
    job: JobView | None = None
