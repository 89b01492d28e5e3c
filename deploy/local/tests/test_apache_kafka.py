"""The Apache Kafka harness: cluster ids the Kafka tools accept."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from mxw_local import apache_kafka
from mxw_local.apache_kafka import ApacheKafka, unavailable_reason

# 0xF8 encodes to "-" as the first URL-safe base64 character.
DASH_FIRST = uuid.UUID(bytes=b"\xf8" + bytes(15))


def test_a_new_cluster_id_never_starts_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: Iterator[uuid.UUID] = iter([DASH_FIRST, DASH_FIRST, uuid.UUID(int=1)])
    monkeypatch.setattr(apache_kafka.uuid, "uuid4", lambda: next(drawn))

    cluster = ApacheKafka(tmp_path)

    assert cluster.cluster_id == "AAAAAAAAAAAAAAAAAAAAAQ"
    assert (tmp_path / "cluster-id").read_text() == cluster.cluster_id


@pytest.mark.infra  # starts a broker
async def test_a_kept_cluster_id_that_starts_with_a_dash_still_formats(tmp_path: Path) -> None:
    """A data directory made before ids were drawn without a leading dash keeps its id;
    formatting passes it as --cluster-id=<id>, which the tool cannot read as an option."""
    if reason := unavailable_reason():
        pytest.skip(f"Apache Kafka cannot run here: {reason}")
    (tmp_path / "cluster-id").write_text("-" + "A" * 21)

    with ApacheKafka(tmp_path) as kafka:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
        finally:
            await admin.close()

    assert cluster["cluster_id"] == "-" + "A" * 21
