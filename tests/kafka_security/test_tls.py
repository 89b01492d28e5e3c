"""SASL_SSL, as Kubernetes runs it (Strimzi's TLS listener, SCRAM-SHA-512, the cluster CA
mounted as MXW_KAFKA_SSL_CAFILE): Apache Kafka with a TLS client listener whose certificate
a CA made here signed; the set-up and a service's principal over it, and a client that does
not trust that CA refused with a clear error."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mxw_local.apache_kafka import ApacheKafka, unavailable_reason
from mxw_shared import kafka_access, kafka_setup, topics
from mxw_shared.kafka import KafkaAccessError, check_access, client_options, make_producer
from mxw_shared.settings import CommonSettings
from pydantic import SecretStr

pytestmark = [
    pytest.mark.infra,  # Apache Kafka of its own
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(folder: Path) -> tuple[Path, Path]:
    """(CA certificate, broker key + certificate chain), PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("mxwhisper test CA"))
        .issuer_name(_name("mxwhisper test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    broker = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, keystore = folder / "ca.crt", folder / "broker.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    keystore.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + broker.public_bytes(serialization.Encoding.PEM)
        + ca.public_bytes(serialization.Encoding.PEM)
    )
    return ca_file, keystore


@dataclass
class TlsKafka:
    kafka: ApacheKafka
    ca_file: Path
    passwords: dict[str, str]

    def settings(self, name: str, **overrides: Any) -> CommonSettings:
        values: dict[str, Any] = {
            "service_name": name,
            "kafka_bootstrap_servers": self.kafka.bootstrap_servers,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_username": name,
            "kafka_password": SecretStr(self.passwords[name]),
            "kafka_ssl_cafile": self.ca_file,
            "kafka_partitions": 1,
        }
        return CommonSettings(**(values | overrides))


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    root = tmp_path_factory.mktemp("kafka-tls")
    ca_file, keystore = make_certificates(root)
    kafka = ApacheKafka(
        root / "kafka",
        1,
        sasl=True,
        extra_config={
            # The client (and inter-broker) listener on TLS; the controller's stays as it is.
            "listener.security.protocol.map": "CLIENT:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(ca_file),
            "group.initial.rebalance.delay.ms": "0",
        },
    )
    kafka.start()
    try:
        passwords = {p.name: f"{p.name}-tls-password" for p in kafka_access.SERVICES.values()}
        passwords[kafka_access.ADMIN] = kafka.admin.password
        tls = TlsKafka(kafka, ca_file, passwords)
        asyncio.run(
            kafka_setup.setup(
                tls.settings(kafka_access.ADMIN), list(kafka_access.SERVICES.values()), passwords
            )
        )
        yield tls
    except BaseException:
        print(kafka.logs_tail())
        raise
    finally:
        kafka.stop()


async def test_a_service_publishes_and_consumes_over_tls_as_its_principal(
    tls_kafka: TlsKafka,
) -> None:
    chunker = tls_kafka.settings("chunker")
    await check_access(chunker)
    producer = make_producer(chunker)
    await producer.start()
    try:
        await producer.send_and_wait(topics.CHUNKS_READY, b"{}", key=b"tls")
    finally:
        await producer.stop()
    embedder = tls_kafka.settings("embedder")
    consumer = AIOKafkaConsumer(
        topics.CHUNKS_READY,
        **client_options(embedder),
        group_id="embedder",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        batch = await asyncio.wait_for(consumer.getone(), 60)
        assert batch.key == b"tls"
    finally:
        await consumer.stop()


async def test_a_client_that_does_not_trust_the_brokers_ca_is_refused(
    tls_kafka: TlsKafka,
) -> None:
    # The system's CAs (MXW_KAFKA_SSL_CAFILE unset) never signed the test CA.
    untrusting = tls_kafka.settings("chunker", kafka_ssl_cafile=None)
    with pytest.raises(KafkaAccessError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        await check_access(untrusting)


async def test_the_tls_listener_takes_no_plain_client_and_still_authorizes(
    tls_kafka: TlsKafka,
) -> None:
    plain = tls_kafka.settings("chunker", kafka_security_protocol="SASL_PLAINTEXT")
    with pytest.raises(KafkaAccessError, match="MXW_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"):
        await check_access(plain)
    producer = AIOKafkaProducer(**client_options(tls_kafka.settings("notifier")))
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):  # the notifier writes nothing
            await asyncio.wait_for(producer.send_and_wait(topics.JOB_STATUS, b"{}"), 30)
    finally:
        await producer.stop()
