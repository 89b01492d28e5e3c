"""The Kafka access plan (mxw_shared.kafka_access) and the SASL settings, as pure data:
what each principal may do, derived from what it consumes and produces. No broker here;
test_secured_kafka.py checks that Apache Kafka enforces the same plan, tests/deploy/test_k8s.py
that the code and the Kubernetes manifests agree with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mxw_shared import kafka_access, kafka_setup, topics
from mxw_shared.kafka import security_options
from mxw_shared.kafka_access import Acl, Group, Operation, Pattern, Principal, Resource
from mxw_shared.settings import CommonSettings
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[2]
SERVICES = kafka_access.SERVICES


def topics_with(principal: Principal, operation: Operation) -> set[str]:
    return {
        a.name
        for a in principal.acls()
        if a.resource == Resource.topic and a.operation == operation
    }


def groups_with(principal: Principal, operation: Operation) -> set[tuple[str, Pattern]]:
    return {
        (a.name, a.pattern)
        for a in principal.acls()
        if a.resource == Resource.group and a.operation == operation
    }


def test_one_principal_per_service() -> None:
    services = {p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml")}
    assert set(SERVICES) == services
    assert all(name == p.name for name, p in SERVICES.items())


@pytest.mark.parametrize("worker", sorted(kafka_access.STAGE_INPUTS))
def test_a_worker_reads_only_its_input_in_its_own_group(worker: str) -> None:
    principal = SERVICES[worker]
    assert topics_with(principal, Operation.read) == set(kafka_access.STAGE_INPUTS[worker])
    assert groups_with(principal, Operation.read) == {(worker, Pattern.literal)}
    assert groups_with(principal, Operation.describe) == set()


def test_the_relays_write_every_outbox_topic_and_only_those() -> None:
    # Any relay publishes any outbox row: events, job.status, dead letters, replays.
    assert set(kafka_access.OUTBOX_TOPICS) == set(topics.all_topics_with_dlq())
    for name in ("gateway", *kafka_access.STAGE_INPUTS):
        assert topics_with(SERVICES[name], Operation.write) == set(kafka_access.OUTBOX_TOPICS)


def test_the_notifier_reads_job_status_in_its_groups_and_writes_nothing() -> None:
    notifier = SERVICES["notifier"]
    assert topics_with(notifier, Operation.read) == {topics.JOB_STATUS}
    assert topics_with(notifier, Operation.write) == set()
    assert groups_with(notifier, Operation.read) == {
        (kafka_access.NOTIFIER_GROUP_PREFIX, Pattern.prefixed)
    }


def test_the_gateway_reads_dead_letters_and_watches_the_stage_groups() -> None:
    gateway = SERVICES["gateway"]
    assert topics_with(gateway, Operation.read) == {topics.dlq(t) for t in topics.ALL_TOPICS}
    assert groups_with(gateway, Operation.read) == set()  # it joins no group
    assert groups_with(gateway, Operation.describe) == {
        (name, Pattern.literal) for name in kafka_access.STAGE_INPUTS
    }


def test_every_grant_comes_with_describe_and_nothing_broader() -> None:
    for principal in [
        *SERVICES.values(),
        kafka_access.LAG_READER,
        kafka_access.outside_system("a"),
    ]:
        acls = principal.acls()
        assert acls == sorted(set(acls)), principal.name  # no rule twice
        used = {a.name for a in acls if a.resource == Resource.topic}
        assert used == topics_with(principal, Operation.describe), principal.name
        assert used <= set(topics.all_topics_with_dlq()), principal.name
        # Topic ACLs name topics one by one: no prefix, no wildcard, no Create or All.
        assert all(a.pattern == Pattern.literal for a in acls if a.resource == Resource.topic)
        assert all("*" not in a.name for a in acls), principal.name
        assert {a.operation for a in acls} <= set(Operation), principal.name


def test_the_lag_reader_only_describes_the_stage_groups_and_topics() -> None:
    keda = kafka_access.LAG_READER
    assert {a.operation for a in keda.acls()} == {Operation.describe}
    assert topics_with(keda, Operation.describe) == {
        t for inputs in kafka_access.STAGE_INPUTS.values() for t in inputs
    }


def test_an_outside_system_writes_audio_uploaded_and_reads_the_published_topics() -> None:
    acme = kafka_access.outside_system("acme")
    assert topics_with(acme, Operation.write) == {topics.AUDIO_UPLOADED}
    assert topics_with(acme, Operation.read) == {
        topics.TRANSCRIPT_READY,
        topics.TRANSCRIPT_EDITED,  # a person's corrections, for systems that follow them
        topics.CHUNKS_READY,
        topics.EMBEDDINGS_READY,
    }
    assert topics.JOB_STATUS not in topics_with(acme, Operation.describe)
    assert groups_with(acme, Operation.read) == {("acme-", Pattern.prefixed)}
    assert Acl(Resource.topic, topics.JOB_STATUS, Pattern.literal, Operation.write) not in (
        acme.acls()
    )


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("gateway", "our principals"),
        ("admin", "our principals"),
        ("keda", "our principals"),
        ("notifier-x", "groups of notifier"),  # its groups notifier-x-… are the notifier's
        ("Acme", "lower-case"),
        ("a" * 64, "at most 63"),
        ("acme.corp", "lower-case"),
    ],
)
def test_outside_system_names_that_would_share_a_principal_or_groups_are_refused(
    name: str, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        kafka_access.outside_system(name)


def test_a_plan_names_each_outside_system_once() -> None:
    assert [p.name for p in kafka_access.plan(["a", "b"])][-2:] == ["a", "b"]
    with pytest.raises(ValueError, match="twice"):
        kafka_access.plan(["a", "a"])


def test_group_overlap_covers_prefixes_both_ways() -> None:
    prefixed = Principal("p", groups=(Group("team-", Pattern.prefixed),))
    assert prefixed.overlaps(Group("team-a"))
    assert prefixed.overlaps(Group("team-a-", Pattern.prefixed))
    assert prefixed.overlaps(Group("te", Pattern.prefixed))
    assert not prefixed.overlaps(Group("team"))
    assert not Principal("l", groups=(Group("chunker"),)).overlaps(
        Group("chunker-", Pattern.prefixed)
    )


def test_kafka_users_render_every_acl_of_the_plan() -> None:
    for principal in [*SERVICES.values(), kafka_access.LAG_READER]:
        user = kafka_access.kafka_user(principal)
        assert user["metadata"]["name"] == principal.name
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        rendered = {
            (
                rule["resource"]["type"],
                rule["resource"]["name"],
                rule["resource"]["patternType"],
                op,
            )
            for rule in user["spec"]["authorization"]["acls"]
            for op in rule["operations"]
        }
        expected = {
            (a.resource.value, a.name, kafka_access.STRIMZI_PATTERN[a.pattern], a.operation.value)
            for a in principal.acls()
        }
        assert rendered == expected, principal.name


def test_outside_names_come_one_by_one_or_comma_separated() -> None:
    assert kafka_setup._names(["a,b", " c ", ""]) == ["a", "b", "c"]


def test_passwords_are_generated_once_and_kept(tmp_path: Path) -> None:
    kafka_setup.ensure_passwords(tmp_path, ["admin", "chunker"])
    first = kafka_setup.read_passwords(tmp_path, ["admin", "chunker"])
    kafka_setup.ensure_passwords(tmp_path, ["admin", "chunker", "acme"])
    again = kafka_setup.read_passwords(tmp_path, ["admin", "chunker", "acme"])
    assert {k: again[k] for k in first} == first
    assert len(set(again.values())) == 3
    assert all(len(p) >= 40 for p in again.values())
    with pytest.raises(ValueError, match="no password for 'embedder'"):
        kafka_setup.read_passwords(tmp_path, ["embedder"])


def test_sasl_credentials_come_from_the_password_or_its_file(tmp_path: Path) -> None:
    sasl = {"kafka_security_protocol": "SASL_SSL", "kafka_username": "chunker"}
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    assert CommonSettings(**sasl, kafka_password_file=secret).kafka_sasl_credentials() == (
        "chunker",
        "s3cret",
    )
    options = security_options(CommonSettings(**sasl, kafka_password=SecretStr("pw")))
    assert options["sasl_plain_password"] == "pw"
    assert options["ssl_context"] is not None
    assert security_options(CommonSettings()) == {}  # PLAINTEXT: the local stack
    # Settings name the principal, never the password.
    assert "s3cret" not in repr(CommonSettings(**sasl, kafka_password=SecretStr("s3cret")))


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({"kafka_password": SecretStr("pw")}, "needs MXW_KAFKA_USERNAME"),
        ({"kafka_username": "a"}, "needs MXW_KAFKA_PASSWORD or MXW_KAFKA_PASSWORD_FILE"),
        (
            {"kafka_username": "a", "kafka_password": SecretStr("pw"), "kafka_password_file": "/x"},
            "not both",
        ),
        ({"kafka_username": "a", "kafka_password_file": "/nonexistent/password"}, "No such file"),
    ],
)
def test_incomplete_sasl_credentials_say_what_is_missing(
    values: dict[str, object], why: str
) -> None:
    settings = CommonSettings(kafka_security_protocol="SASL_PLAINTEXT", **values)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=why):
        security_options(settings)


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("\n")
    settings = CommonSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_username="a",
        kafka_password_file=tmp_path / "password",
    )
    with pytest.raises(ValueError, match="is empty"):
        settings.kafka_sasl_credentials()
