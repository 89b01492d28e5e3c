"""Who may do what on Kafka, declared once: one principal per service and per outside
system, each allowed the least its work needs, and the ACLs that follow from it.

- Consuming a topic: Read (and Describe) on the topic, Read on the consumer groups the
  service reads it in (a prefixed pattern where group names carry an instance suffix: the
  notifier's per-replica groups).
- Producing: every service that relays the outbox may publish any outbox row (the outbox is
  one table; any relay takes any lane, mxw_shared.outbox), and the outbox carries every
  topic and dead-letter topic: events, job.status, dead letters, admin replays. So the
  relaying services share one set of writable topics. What one service writes into the
  outbox is bounded by the database, which they share anyway; the line Kafka draws is
  between our services and everyone else. The notifier does not relay: it writes nothing.
- The idempotent producer needs no IdempotentWrite on the cluster: Kafka (3.0 and later,
  KIP-679) lets a principal that may write some topic initialise an idempotent producer.
- Nobody here creates topics: on a secured cluster the set-up step does
  (mxw_shared.kafka_setup as the cluster's admin, or Strimzi's KafkaTopics), and the
  services run with MXW_KAFKA_CREATE_TOPICS=false.
- An outside system may write `audio.uploaded` and read what we publish for outsiders
  (OUTSIDE_READABLE) in consumer groups named `<its name>-…`, and nothing else.

Applied by mxw_shared.kafka_setup (compose, the tests), rendered as Strimzi KafkaUsers for
Kubernetes (`python -m mxw_shared.kafka_access kafka-users`, deploy/k8s/base/kafka-users.yaml;
tests/deploy checks that the file is what the plan renders).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import yaml

from mxw_shared import topics
from mxw_shared.stages import PIPELINE


class Resource(StrEnum):
    topic = "topic"
    group = "group"


class Pattern(StrEnum):
    literal = "literal"
    prefixed = "prefixed"


class Operation(StrEnum):
    read = "Read"
    write = "Write"
    describe = "Describe"


@dataclass(frozen=True, order=True)
class Acl:
    """One allow rule of a principal (on any host)."""

    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation


@dataclass(frozen=True)
class Group:
    """Consumer groups: one name, or every name that starts with `name` (prefixed)."""

    name: str
    pattern: Pattern = Pattern.literal


@dataclass(frozen=True)
class Principal:
    """A SCRAM user and what it may do."""

    name: str
    reads: tuple[str, ...] = ()  # topics it consumes
    writes: tuple[str, ...] = ()  # topics it produces
    groups: tuple[Group, ...] = ()  # consumer groups it consumes in
    describes: tuple[str, ...] = ()  # topics whose offsets it reads (lag)
    watches: tuple[Group, ...] = ()  # groups whose committed offsets it reads (lag)

    def acls(self) -> list[Acl]:
        """Read/Describe on consumed topics, Write/Describe on produced ones, Read on its
        groups, Describe on the topics and groups whose lag it reads."""
        rules: set[Acl] = set()

        def topic(name: str, *operations: Operation) -> None:
            rules.update(Acl(Resource.topic, name, Pattern.literal, op) for op in operations)

        for name in self.reads:
            topic(name, Operation.read, Operation.describe)
        for name in self.writes:
            topic(name, Operation.write, Operation.describe)
        for group in self.groups:
            rules.add(Acl(Resource.group, group.name, group.pattern, Operation.read))
        for name in self.describes:
            topic(name, Operation.describe)
        for group in self.watches:
            rules.add(Acl(Resource.group, group.name, group.pattern, Operation.describe))
        return sorted(rules)

    def overlaps(self, group: Group) -> bool:
        """Whether some group name would fall under both `group` and one of its own."""
        return any(_overlap(group, mine) for mine in self.groups)


def _overlap(a: Group, b: Group) -> bool:
    if a.pattern == Pattern.literal and b.pattern == Pattern.literal:
        return a.name == b.name
    if a.pattern == Pattern.prefixed and b.pattern == Pattern.prefixed:
        return a.name.startswith(b.name) or b.name.startswith(a.name)
    literal, prefix = (a, b) if a.pattern == Pattern.literal else (b, a)
    return literal.name.startswith(prefix.name)


# Every topic an outbox row may name: any relaying service publishes any of them.
OUTBOX_TOPICS: tuple[str, ...] = tuple(topics.all_topics_with_dlq())
DLQ_TOPICS: tuple[str, ...] = tuple(topics.dlq(t) for t in topics.ALL_TOPICS)
# The stage workers' consumer groups (each worker's group is its service name,
# `subscribe_stage(group_id=settings.service_name)`) and the topics each consumes: the
# stage table's.
STAGE_INPUTS: dict[str, tuple[str, ...]] = PIPELINE.service_inputs
# The notifier's groups: one per replica (`notifier-<instance>-<random>`, live fan-out)
# and the replicas' shared webhook group (`notifier-webhooks`).
NOTIFIER_GROUP_PREFIX = "notifier-"
# What other systems may consume (DESIGN.md, "Who uses it"; docs/asyncapi.json). job.status
# is not among them: it carries every user's job progress, for our notifier.
OUTSIDE_READABLE: tuple[str, ...] = (
    topics.TRANSCRIPT_READY,
    topics.TRANSCRIPT_EDITED,
    topics.CHUNKS_READY,
    topics.EMBEDDINGS_READY,
)
# What other systems may produce.
OUTSIDE_WRITABLE: tuple[str, ...] = (topics.AUDIO_UPLOADED,)

_STAGE_GROUPS = tuple(Group(name) for name in STAGE_INPUTS)
_STAGE_TOPICS = tuple(dict.fromkeys(t for inputs in STAGE_INPUTS.values() for t in inputs))

SERVICES: dict[str, Principal] = {
    p.name: p
    for p in (
        # Admin views: consumer lag of the stage groups, dead letters read and replayed.
        Principal(
            "gateway",
            reads=DLQ_TOPICS,
            writes=OUTBOX_TOPICS,
            describes=_STAGE_TOPICS,
            watches=_STAGE_GROUPS,
        ),
        Principal(
            "notifier",
            reads=(topics.JOB_STATUS,),
            groups=(Group(NOTIFIER_GROUP_PREFIX, Pattern.prefixed),),
        ),
        *(
            Principal(name, reads=inputs, writes=OUTBOX_TOPICS, groups=(Group(name),))
            for name, inputs in STAGE_INPUTS.items()
        ),
    )
}
# KEDA's kafka scaler (Kubernetes only): reads the stage groups' lag, nothing else.
LAG_READER = Principal("keda", describes=_STAGE_TOPICS, watches=_STAGE_GROUPS)
# The cluster's super user: created with the broker (compose, mxw_local), never by the plan.
ADMIN = "admin"

_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")


def outside_system(name: str) -> Principal:
    """The principal of another system that publishes audio.uploaded and consumes what we
    publish for outsiders, in consumer groups `<name>-…` of its own."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"outside system name {name!r}: lower-case letters, digits and '-',"
            " starting with a letter, at most 63 characters"
        )
    if name in {*SERVICES, LAG_READER.name, ADMIN}:
        raise ValueError(f"outside system name {name!r} is the name of one of our principals")
    groups = Group(f"{name}-", Pattern.prefixed)
    if sharing := [p.name for p in SERVICES.values() if p.overlaps(groups)]:
        raise ValueError(
            f"outside system name {name!r}: its consumer groups {name}-… would include"
            f" groups of {', '.join(sharing)}"
        )
    return Principal(name, reads=OUTSIDE_READABLE, writes=OUTSIDE_WRITABLE, groups=(groups,))


def plan(outside: list[str] | tuple[str, ...] = ()) -> list[Principal]:
    """The services' principals and those of the named outside systems."""
    systems = [outside_system(name) for name in outside]
    if len({s.name for s in systems}) != len(systems):
        raise ValueError(f"outside systems named twice: {list(outside)}")
    return [*SERVICES.values(), *systems]


# ---- Strimzi (Kubernetes) ----

STRIMZI_PATTERN = {Pattern.literal: "literal", Pattern.prefixed: "prefix"}


def kafka_user(principal: Principal, cluster: str = "mxwhisper") -> dict[str, Any]:
    """The Strimzi KafkaUser of a principal: SCRAM-SHA-512, its ACLs grouped by resource.
    The User Operator writes the password into a Secret of the same name (key `password`)."""
    by_resource: dict[tuple[Resource, str, Pattern], list[str]] = {}
    for acl in principal.acls():
        by_resource.setdefault((acl.resource, acl.name, acl.pattern), []).append(
            acl.operation.value
        )
    acls = [
        {
            "resource": {
                "type": resource.value,
                "name": name,
                "patternType": STRIMZI_PATTERN[pattern],
            },
            "operations": sorted(operations),
            "host": "*",
        }
        for (resource, name, pattern), operations in sorted(by_resource.items())
    ]
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaUser",
        "metadata": {
            "name": principal.name,
            "labels": {"strimzi.io/cluster": cluster, "app.kubernetes.io/part-of": "mxwhisper"},
        },
        "spec": {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {"type": "simple", "acls": acls},
        },
    }


def kafka_users_yaml(outside: list[str] | tuple[str, ...] = ()) -> str:
    """deploy/k8s/base/kafka-users.yaml (no outside systems), or the KafkaUsers of the named
    outside systems alone (docs/deploy.md, "Adding an outside system")."""
    principals = (
        [outside_system(n) for n in outside] if outside else [*SERVICES.values(), LAG_READER]
    )
    header = (
        "# Generated from mxw_shared.kafka_access: python -m mxw_shared.kafka_access kafka-users"
        + "".join(f" --outside {n}" for n in outside)
        + "\n# One Strimzi KafkaUser (SCRAM-SHA-512, simple ACLs) per principal; the User"
        " Operator\n# writes each password into a Secret named like the user (key `password`).\n"
    )
    docs = [kafka_user(p) for p in principals]
    return header + str(
        yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True, default_flow_style=None)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mxw_shared.kafka_access", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    users = commands.add_parser("kafka-users", help="the Strimzi KafkaUsers, as YAML")
    users.add_argument("--outside", action="append", default=[], metavar="NAME")
    acls = commands.add_parser("acls", help="every principal's ACLs, one per line")
    acls.add_argument("--outside", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    if args.command == "kafka-users":
        sys.stdout.write(kafka_users_yaml(args.outside))
        return
    for principal in plan(args.outside):
        for acl in principal.acls():
            print(f"User:{principal.name} {acl.operation} {acl.resource}:{acl.pattern}:{acl.name}")


if __name__ == "__main__":
    main()
