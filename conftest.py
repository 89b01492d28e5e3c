"""Session-wide real infrastructure for every test tier: embedded PostgreSQL + pgvector and
the tansu Kafka-protocol broker, started the same way the local stack starts them; and, for
the broker-sensitive suites, one Apache Kafka node (KRaft, from Maven Central) beside it.

Broker-sensitive modules take `broker_kind` (module-scoped, "embedded" then "kafka"): a stack
fixture passes it to `launch_stack(..., broker=broker_kind)`, an in-process module uses
`broker_infra` (the session's Postgres and blob root, with that broker) and the `broker_*`
helpers. The kafka side skips, saying why, where Apache Kafka cannot run (no Java)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
from mxw_shared.speakers import Turn

if TYPE_CHECKING:
    from mxw_local.apache_kafka import ApacheKafka

T = TypeVar("T")
# The brokers the broker-sensitive suites run on: the embedded default and the engine that
# compose and Kubernetes deploy.
BROKERS = ("embedded", "kafka")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The key the gateway seals webhook secrets under and the notifier opens them with: one per
# test session, for every in-process service and every process the tests start.
if "MXW_WEBHOOK_SECRET_KEY" not in os.environ:
    from cryptography.fernet import Fernet

    os.environ["MXW_WEBHOOK_SECRET_KEY"] = Fernet.generate_key().decode()


@dataclass(frozen=True)
class Infra:
    dsn: str
    bootstrap_servers: str
    root: Path
    # tansu rejects InitProducerId; Apache Kafka is where the idempotent producer runs.
    idempotent_producer: bool = False

    def env(self, service: str, port: int = 0, **extra: str) -> dict[str, str]:
        """MXW_* settings for a service running against this infrastructure."""
        env = {
            "MXW_SERVICE_NAME": service,
            "MXW_DATABASE_URL": self.dsn,
            "MXW_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "MXW_KAFKA_IDEMPOTENT_PRODUCER": str(self.idempotent_producer).lower(),
            "MXW_BLOB_ROOT": str(self.root / "blobs"),
            "MXW_AUTH_JWKS_URL": (self.root / "auth" / "jwks.json").as_uri(),
            "MXW_PORT": str(port),
            "MXW_RETRY_BACKOFF_S": "0.1",
            "MXW_OUTBOX_POLL_INTERVAL_S": "0.2",
        }
        env.update(extra)
        return env

    def settings(self, cls: type[T], service: str, **overrides: object) -> T:
        """Settings of an in-process service pointed at this infrastructure."""
        values: dict[str, object] = {
            k.removeprefix("MXW_").lower(): v for k, v in self.env(service).items()
        }
        values.update(overrides)
        return cls(**values)


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    from mxw_local.infra import EmbeddedKafka, EmbeddedPostgres, free_port
    from mxw_shared.devissuer import DevIssuer
    from mxw_shared.migrate import migrate

    root = tmp_path_factory.mktemp("infra")
    postgres = EmbeddedPostgres(root / "pg", free_port())
    kafka = EmbeddedKafka(free_port(), log_path=root / "tansu.log")
    dsn = postgres.start()
    try:
        kafka.start()
        asyncio.run(migrate(dsn))
        DevIssuer.ensure(root / "auth")
        yield Infra(dsn=dsn, bootstrap_servers=kafka.bootstrap_servers, root=root)
    finally:
        kafka.stop()
        postgres.stop()


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    """One Apache Kafka node (KRaft, Kafka's own defaults for group coordination: session
    timeout, max.poll.interval, a 3 s initial rebalance delay) with the pipeline's topics,
    shared by the in-process tests on the kafka side as `infra`'s tansu is on the other."""
    from mxw_local.apache_kafka import ApacheKafka, unavailable_reason
    from mxw_shared.kafka import ensure_topics
    from mxw_shared.settings import CommonSettings

    if reason := unavailable_reason():
        pytest.skip(f"Apache Kafka cannot run here: {reason}")
    with ApacheKafka(tmp_path_factory.mktemp("apache-kafka")) as kafka:
        settings = CommonSettings(kafka_bootstrap_servers=kafka.bootstrap_servers)
        asyncio.run(ensure_topics(settings))
        yield kafka


@pytest.fixture(scope="module", params=BROKERS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The broker this module's tests run on: every broker-sensitive module runs once per
    broker (module scope: one stack, or one set of in-process services, per broker)."""
    from mxw_local.apache_kafka import unavailable_reason

    kind: str = request.param
    if kind == "kafka" and (reason := unavailable_reason()):
        pytest.skip(f"Apache Kafka cannot run here: {reason}")
    return kind


@pytest.fixture(scope="module")
def broker_infra(request: pytest.FixtureRequest, infra: Infra, broker_kind: str) -> Infra:
    """`infra` on this module's broker: the session's tansu, or the session's Apache Kafka
    node with the idempotent producer on."""
    if broker_kind == "embedded":
        return infra
    kafka: ApacheKafka = request.getfixturevalue("apache_kafka")
    return replace(infra, bootstrap_servers=kafka.bootstrap_servers, idempotent_producer=True)


@pytest.fixture(scope="session")
def dev_issuer(infra: Infra):  # type: ignore[no-untyped-def]
    from mxw_shared.devissuer import DevIssuer

    return DevIssuer.ensure(infra.root / "auth")


# ---- helpers shared by integration tests: real Postgres rows, real Kafka records ----


@pytest.fixture(scope="session")
async def db(infra: Infra):  # type: ignore[no-untyped-def]
    from mxw_shared.db import create_pool

    pool = await create_pool(infra.dsn, 1, 5)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def make_job(db):  # type: ignore[no-untyped-def]
    """Insert a job row the way the gateway does; returns its id."""
    import json
    import uuid

    async def make(
        owner_id: str = "alice",
        *,
        audio_uri: str = "file:///nonexistent",
        sha256: str = "0" * 64,
        **options: object,
    ) -> uuid.UUID:
        """`audio_uri`/`sha256` matter where the stage sweeper may rebuild the event from
        this row (a worker killed mid-job); other tests publish their own."""
        job_id = uuid.uuid4()
        await db.execute(
            "INSERT INTO jobs (id, owner_id, filename, audio_uri, sha256, options) "
            "VALUES ($1, $2, 'test.wav', $3, $4, $5::jsonb)",
            job_id,
            owner_id,
            audio_uri,
            sha256,
            json.loads(json.dumps(options)),
        )
        return job_id

    return make


@pytest.fixture(scope="session")
async def kafka_producer(infra: Infra):  # type: ignore[no-untyped-def]
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=infra.bootstrap_servers, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture(scope="session")
def publisher():  # type: ignore[no-untyped-def]
    """publisher(producer) -> `publish` through that producer (a module's own broker)."""
    from mxw_shared.contracts import Envelope, EventData

    def through(producer):  # type: ignore[no-untyped-def]
        async def send(event: EventData, envelope: Envelope | None = None) -> Envelope:
            envelope = envelope or Envelope.for_event(event, source="tests")
            await producer.send_and_wait(
                event.topic,
                value=event.model_dump_json().encode(),
                key=str(event.job_id).encode(),
                headers=[(k, v.encode()) for k, v in envelope.to_headers().items()],
            )
            return envelope

        return send

    return through


@pytest.fixture(scope="session")
def publish(kafka_producer, publisher):  # type: ignore[no-untyped-def]
    """Publish an event straight to Kafka as another system would; returns its envelope."""
    return publisher(kafka_producer)


@pytest.fixture(scope="module")
async def broker_publish(broker_infra: Infra, publisher):  # type: ignore[no-untyped-def]
    """`publish` on this module's broker (`broker_kind`)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=broker_infra.bootstrap_servers, acks="all")
    await producer.start()
    yield publisher(producer)
    await producer.stop()


async def readable_batch(consumer):  # type: ignore[no-untyped-def]
    """One `getmany` of a test's reader, stepping past a record aiokafka cannot parse (the
    poison tests write such records to the session broker's topics, as a foreign client may)."""
    from mxw_shared.kafka import skip_unreadable

    try:
        return await consumer.getmany(timeout_ms=500)
    except UnicodeDecodeError:
        await skip_unreadable(consumer, consumer.assignment())
        return {}


def topic_reader(bootstrap_servers: str):  # type: ignore[no-untyped-def]
    """`read_topic` on the broker at `bootstrap_servers`."""
    import json
    import time
    import uuid

    from aiokafka import AIOKafkaConsumer

    async def read(
        topic: str, job_id: uuid.UUID, count: int = 1, timeout_s: float = 60.0
    ) -> list[tuple[dict[str, str], dict[str, object]]]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        found: list[tuple[dict[str, str], dict[str, object]]] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(found) < count and time.monotonic() < deadline:
                for records in (await readable_batch(consumer)).values():
                    for r in records:
                        if r.key == str(job_id).encode():
                            headers = {k: v.decode() for k, v in r.headers}
                            try:
                                value = json.loads(r.value)
                            except ValueError:
                                value = {"raw": r.value.decode(errors="replace")}
                            found.append((headers, value))
        finally:
            await consumer.stop()
        return found

    return read


@pytest.fixture(scope="session")
def read_topic(infra: Infra):  # type: ignore[no-untyped-def]
    """Collect the records of one job on a topic, from the beginning, until `count` arrived
    or `timeout_s` passed. Returns (headers, value) pairs."""
    return topic_reader(infra.bootstrap_servers)


@pytest.fixture(scope="module")
def broker_read_topic(broker_infra: Infra):  # type: ignore[no-untyped-def]
    """`read_topic` on this module's broker (`broker_kind`)."""
    return topic_reader(broker_infra.bootstrap_servers)


@pytest.fixture(scope="session")
def read_probes(infra: Infra):  # type: ignore[no-untyped-def]
    """Collect the records of a topic that carry a `probe` header among `probes` (records
    without a usable key, e.g. dead letters of malformed events), from the beginning, until
    all arrived or `timeout_s` passed. Returns {probe: (headers, value, key)}. `probe_of`
    finds a record's probe in its headers another way."""
    import time
    from collections.abc import Callable

    from aiokafka import AIOKafkaConsumer

    def probe_header(headers: dict[str, str]) -> str | None:
        return headers.get("probe")

    async def read(
        topic: str,
        probes: set[str],
        timeout_s: float = 60.0,
        probe_of: Callable[[dict[str, str]], str | None] = probe_header,
    ) -> dict[str, tuple[dict[str, str], bytes, bytes | None]]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=infra.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        found: dict[str, tuple[dict[str, str], bytes, bytes | None]] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while set(found) != probes and time.monotonic() < deadline:
                for records in (await readable_batch(consumer)).values():
                    for r in records:
                        headers = {k: v.decode(errors="replace") for k, v in r.headers}
                        if (probe := probe_of(headers)) in probes:
                            found[probe] = (headers, r.value, r.key)
        finally:
            await consumer.stop()
        return found

    return read


@pytest.fixture(scope="session")
def publish_unreadable(kafka_producer):  # type: ignore[no-untyped-def]
    """Write a record whose header *name* is not UTF-8 to `topic`/`partition`, as a client
    other than aiokafka may: aiokafka cannot produce one, and cannot parse one either.
    `before`: readable records (value, headers) put in front of it in the same record batch,
    so one fetch always holds them and it together. Returns the unreadable record's offset."""
    from aiokafka import TopicPartition
    from aiokafka.protocol.produce import ProduceRequest
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    class RawName(str):
        def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
            return b"\xff\xfe"

    async def send(
        topic: str,
        partition: int,
        value: bytes,
        before: tuple[tuple[bytes, list[tuple[str, bytes]]], ...] = (),
    ) -> int:
        batch = _DefaultRecordBatchBuilderPy(2, 0, False, -1, -1, -1, 1 << 20)
        for delta, (readable, headers) in enumerate(before):
            batch.append(delta, timestamp=None, key=None, value=readable, headers=headers)
        batch.append(
            len(before), timestamp=None, key=None, value=value, headers=[(RawName(), b"v")]
        )
        client = kafka_producer.client
        await client._wait_on_metadata(topic)
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(None, -1, 30_000, [(topic, [(partition, bytes(batch.build()))])])
        response = await client.send(leader, request)
        (_, ((_, error_code, offset, *_),)), *_ = response.topics
        assert error_code == 0, response
        return int(offset) + len(before)

    return send


@pytest.fixture(scope="session")
def wait_for(db):  # type: ignore[no-untyped-def]
    """Poll a SQL query until `predicate(value)` holds; returns the value."""
    import asyncio
    import time

    async def wait(sql: str, *args: object, predicate=bool, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = await db.fetchval(sql, *args)
            if predicate(value):
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting on {sql!r}: last value {value!r}")

    return wait


@pytest.fixture(scope="session")
def s3_server():  # type: ignore[no-untyped-def]
    """Context manager: a real S3-protocol server (moto) on 127.0.0.1 with `bucket`
    created; yields its endpoint URL while the AWS_* variables point obstore at it
    (restored afterwards)."""
    from contextlib import contextmanager

    import boto3
    from moto.server import ThreadedMotoServer

    @contextmanager
    def serve(bucket: str) -> Iterator[str]:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
            with pytest.MonkeyPatch.context() as env:
                for name, value in {
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_ALLOW_HTTP": "true",
                    "AWS_ACCESS_KEY_ID": "test",
                    "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_REGION": "us-east-1",
                }.items():
                    env.setenv(name, value)
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
                yield endpoint
        finally:
            server.stop()

    return serve


# ---- real human speech, and the word error rate of what a model heard ----
#
# Tests that check the words a model heard use real speech and assert a word error rate
# with a margin, never exact words: synthetic speech sits at small models' accuracy edge,
# where CTranslate2's CPU kernels (AVX2, AVX512, ...) can tip a word either way.
# The speech comes from Debian's asterisk-core-sounds packages (one real speaker per
# language, 8 kHz telephone prompts, shipped with their transcripts), fetched with
# `apt-get download` (no root needed) and extracted once per checkout into .data/.

SOUNDS_CACHE = Path(__file__).resolve().parent / ".data" / "test-sounds"
# Prompts each model hears clearly, about 15-20 s per clip. Word error rates seen
# 2026-12-02 on an AMD EPYC (no AVX512), the same under CT2_FORCE_CPU_ISA=AVX2, AVX and
# GENERIC: en with tiny.en 4.8 % ("you are" heard as "or"), fr with base 7.0 %
# ("personnel invalides" heard as "personnelle invalid", "autre" missed).
SPEECH_PROMPTS: dict[str, tuple[str, ...]] = {
    "en": ("queue-youarenext", "privacy-unident", "vm-nobox"),
    "fr": ("conf-onlyperson", "confbridge-rest-list-vol-in", "dir-nomore", "confbridge-pin-bad"),
}
_GAP_S = 0.5  # silence between prompts, as between sentences


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "model_words: checks the words a Whisper model heard; `./mxw test` runs these once "
        "more under a CTranslate2 CPU ISA other than the machine's default",
    )
    config.addinivalue_line(
        "markers",
        "unreadable_records: writes records aiokafka cannot parse to the session broker's "
        "topics; `./mxw test` runs these in a session (and broker) of their own",
    )
    config.addinivalue_line(
        "markers",
        "infra: uses real infrastructure (PostgreSQL, a broker, a local stack); set by use "
        "of those fixtures or by hand. `./mxw fast` runs the rest: the inner loop",
    )


# Fixtures that start real infrastructure: a test that uses one, directly or through another
# fixture, is marked `infra`.
INFRA_FIXTURES = frozenset({"infra", "apache_kafka", "launch_stack", "broker_kind"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Set by use of the fixture, so no such test can land in the shared session unmarked.
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "publish_unreadable" in fixtures:
            item.add_marker(pytest.mark.unreadable_records)
        if fixtures & INFRA_FIXTURES:
            item.add_marker(pytest.mark.infra)


def speech_words(text: str) -> list[str]:
    """The words of a transcript for comparison: lower case, without punctuation;
    apostrophes are dropped so "n'y" and "party's" stay one word on both sides."""
    import re

    return re.findall(r"[^\W_]+", re.sub(r"['’]", "", text.lower()))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / words of the reference: the word-level
    edit distance (Levenshtein), normalised by `speech_words`."""
    ref, hyp = speech_words(reference), speech_words(hypothesis)
    if not ref:
        raise ValueError("the reference has no words")
    row = list(range(len(hyp) + 1))  # distances from ref[:i] to every prefix of hyp
    for i, ref_word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, 1):
            diagonal, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_word != hyp_word)),
            )
    return row[len(hyp)] / len(ref)


@dataclass(frozen=True)
class Prompt:
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Speech:
    path: Path  # 16-bit mono WAV, 8 kHz
    language: str
    duration_s: float
    prompts: tuple[Prompt, ...]  # in order, with silence between them

    @property
    def text(self) -> str:
        """What is said, from the package's transcript."""
        return " ".join(p.text for p in self.prompts)

    def wer(self, heard: str) -> float:
        return word_error_rate(self.text, heard)


def _fetch_sounds(language: str) -> Path:
    """The extracted packages of one language (audio + transcripts), downloaded once."""
    import fcntl
    import shutil
    import subprocess
    import tempfile

    target = SOUNDS_CACHE / language
    SOUNDS_CACHE.mkdir(parents=True, exist_ok=True)
    with open(SOUNDS_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download even with parallel test runs
        if target.is_dir():
            return target
        packages = [f"asterisk-core-sounds-{language}-wav", f"asterisk-core-sounds-{language}"]
        with tempfile.TemporaryDirectory(dir=SOUNDS_CACHE) as work:
            done = subprocess.run(
                ["apt-get", "download", *packages], cwd=work, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"`apt-get download {' '.join(packages)}` failed (the package lists may "
                    f"need `apt-get update`): {done.stderr.strip()}"
                )
            extracted = Path(work) / "root"
            for deb in Path(work).glob("*.deb"):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True)
            shutil.move(extracted / "usr" / "share", target)  # complete, or absent
    return target


def _read_pcm(path: Path) -> bytes:
    import wave

    with wave.open(str(path), "rb") as clip:
        params = (clip.getnchannels(), clip.getsampwidth(), clip.getframerate())
        if params != (1, 2, 8000):
            raise ValueError(f"{path}: expected 8 kHz 16-bit mono, found {params}")
        return clip.readframes(clip.getnframes())


def speech_clip(language: str, times: int = 1) -> Speech:
    """SPEECH_PROMPTS[language] read one after the other (`times` over), as one WAV, with
    their text."""
    root = _fetch_sounds(language)
    texts = prompt_texts(language)
    (voice,) = (root / "asterisk" / "sounds").glob(f"{language}_*")  # e.g. fr_CA_f_June
    said = [(texts[n], _read_pcm(voice / f"{n}.wav")) for n in SPEECH_PROMPTS[language] * times]
    return _speech_file(language, said, SOUNDS_CACHE / f"clip-{language}-x{times}.wav")


def _speech_file(
    language: str, said: list[tuple[str, bytes]], path: Path, *, trailing_gap: bool = False
) -> Speech:
    """Prompts (text, 8-kHz PCM) one after the other with _GAP_S pauses, as one WAV at
    `path` (rewritten: a parallel test run reads the old file or this one, never half)."""
    import wave

    gap = b"\x00\x00" * int(8000 * _GAP_S)
    pcm, prompts = b"", []
    for text, piece in said:
        pcm += gap if pcm else b""
        start_s = len(pcm) / 2 / 8000
        pcm += piece
        prompts.append(Prompt(start_s, len(pcm) / 2 / 8000, text))
    pcm += gap if trailing_gap else b""
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    with wave.open(str(partial), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(pcm)
    partial.replace(path)
    return Speech(
        path=path, language=language, duration_s=len(pcm) / 2 / 8000, prompts=tuple(prompts)
    )


@pytest.fixture(scope="session")
def speech():  # type: ignore[no-untyped-def]
    """speech(language, times=1) -> Speech: a clip of real human speech with its reference
    text (`times` over, for audio longer than one 30-s Whisper window).
    Skips where Debian's packages cannot be had (no apt-get, e.g. macOS); where apt-get is
    present a failed download fails the test."""
    _need_sounds()
    clips: dict[tuple[str, int], Speech] = {}

    def get(language: str, times: int = 1) -> Speech:
        if (language, times) not in clips:
            clips[language, times] = speech_clip(language, times)
        return clips[language, times]

    return get


@pytest.fixture(scope="session")
def speech_set():  # type: ignore[no-untyped-def]
    """speech_set(language, count, offset=0) -> Speech: `count` real prompts of a language's
    voice with their text (conftest.make_speech_set), for word error rates on longer audio."""
    _need_sounds()
    return make_speech_set


@pytest.fixture(scope="session")
def wer():  # type: ignore[no-untyped-def]
    """wer(reference, heard) -> word error rate (0.0 = every word heard)."""
    return word_error_rate


# ---- conversations of several real voices, with the true speaker turns ----
#
# The diarizer's tests and bench (bench/diarizer_bench.py) need speech of several people
# with the truth of who spoke when: prompts of several asterisk-core-sounds voices, one after
# the other with pauses, each prompt's speech (its leading and trailing silence cut off) one
# reference turn. Who reads each package, from its copyright file: es and en are the same
# woman, so they are never two speakers of one conversation (CONVERSATION_VOICES).
VOICE_PEOPLE: dict[str, str] = {
    "en": "Allison Smith (en_US_f_Allison)",
    "es": "Allison Smith (es_MX_f_Allison)",
    "fr": "June Wallack (fr_CA_f_June)",
    "it": "Carlo Flora (it_IT_m_Carlo)",
    "ru": "ivrvoice.ru (ru_RU_f_IvrvoiceRU)",
}
CONVERSATION_VOICES = ("en", "fr", "it", "ru")  # four different people
_PROMPT_SECONDS = (1.5, 8.0)  # speech per prompt kept for conversations (after trimming)
_TURN_GAP_S = 0.25  # between two prompts of one turn


@dataclass(frozen=True)
class Conversation:
    path: Path  # 16-bit mono WAV, 8 kHz (decode_audio resamples to 16 kHz, as for uploads)
    voices: tuple[str, ...]  # languages of VOICE_PEOPLE, one speaker each
    # The truth: one turn per prompt (its speech, trimmed), in order, speaker = the language.
    turns: tuple[Turn, ...]
    duration_s: float

    @property
    def changes(self) -> list[float]:
        """Where one speaker stops and another starts: midway through the pause."""
        return [
            (a.end_s + b.start_s) / 2
            for a, b in zip(self.turns, self.turns[1:], strict=False)
            if a.speaker != b.speaker
        ]


def _trim_silence(pcm: bytes) -> bytes:
    """The prompt without its leading and trailing silence (10-ms frames quieter than 3 % of
    the loudest frame's RMS), 50 ms kept on each side."""
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    frame = 80  # 10 ms at 8 kHz
    count = len(samples) // frame
    if count == 0:
        return b""
    rms = np.sqrt((samples[: count * frame].reshape(count, frame) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > 0.03 * rms.max()) if rms.max() > 0 else np.array([], int)
    if len(loud) == 0:
        return b""
    first = max(0, (int(loud[0]) - 5) * frame)
    last = min(len(samples), (int(loud[-1]) + 6) * frame)
    return pcm[2 * first : 2 * last]


_PROMPTS: dict[str, list[tuple[str, bytes]]] = {}


def prompt_texts(language: str) -> dict[str, str]:
    """What each prompt of a language's package says (name -> text), from its transcript."""
    import gzip

    root = _fetch_sounds(language)
    path = root / "doc" / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt.gz"
    out = {}
    with gzip.open(path, "rt", encoding="utf-8-sig") as lines:
        for line in lines.read().splitlines():
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";"):
                out[name.strip()] = text.strip()
    return out


def make_speech_set(language: str, count: int, offset: int = 0) -> Speech:
    """`count` prompts of a language's voice (voice_prompts order from `offset`, so the same
    set on every machine) read one after the other with 0.5-s pauses, as one 8-kHz WAV with
    their text: the real-speech set for word error rates per language (bench and tests)."""
    texts = prompt_texts(language)
    chosen = voice_prompts(language)[offset : offset + count]
    if len(chosen) < count:
        raise ValueError(f"{language} has only {len(chosen)} prompts from {offset}")
    said = [(texts[name], pcm) for name, pcm in chosen]
    path = SOUNDS_CACHE / f"set-{language}-{offset}-{count}.wav"
    return _speech_file(language, said, path, trailing_gap=True)


def voice_prompts(language: str) -> list[tuple[str, bytes]]:
    """(name, trimmed 8-kHz PCM) of every spoken prompt of a voice with 1.5-8 s of speech, in
    an order shuffled once per voice (seeded by the language: the same on every machine).
    Tones and noises (bracketed in the English transcript: beeps, monkeys) are left out."""
    import random

    if language in _PROMPTS:
        return _PROMPTS[language]

    english, own = prompt_texts("en"), prompt_texts(language)
    (voice,) = (_fetch_sounds(language) / "asterisk" / "sounds").glob(f"{language}_*")
    low, high = _PROMPT_SECONDS
    prompts = []
    for wav in sorted(voice.glob("*.wav")):  # top level only: no digits, letters, silence
        name = wav.stem
        said, english_text = own.get(name, ""), english.get(name, "")
        if not said or not english_text or english_text[0] in "[(" or said[0] in "[(":
            continue
        pcm = _trim_silence(_read_pcm(wav))
        if low <= len(pcm) / 2 / 8000 <= high:
            prompts.append((name, pcm))
    random.Random(f"prompts:{language}").shuffle(prompts)  # noqa: S311 (a test set)
    _PROMPTS[language] = prompts
    return prompts


def conversation_clip(
    voices: tuple[str, ...], turns_per_voice: int, seed: int = 0, *, offset: int = 0
) -> Conversation:
    """`turns_per_voice` turns of each voice (1 or 2 prompts each), the voices in a seeded
    order that never gives one voice two turns in a row, 0.4-0.9 s of silence between turns,
    0.5 s before the first and after the last. Each voice reads its prompts from position
    `offset` of voice_prompts (cycling when a long conversation uses them all), so clips
    of one voice at offsets far enough apart share no prompt. One voice: a monologue of
    `turns_per_voice` turns with pauses. Written to .data/test-sounds (and rewritten: a
    parallel run reads the old file or the new one, never half)."""
    import random
    import wave

    if len(set(voices)) != len(voices) or (len(voices) > 1 and {"en", "es"} <= set(voices)):
        raise ValueError(f"{voices}: one speaker per person (en and es are one woman)")
    rng = random.Random(f"conversation:{','.join(voices)}:{turns_per_voice}:{seed}:{offset}")  # noqa: S311
    pools = {v: voice_prompts(v) for v in voices}
    used = dict.fromkeys(voices, offset)
    order: list[str] = []
    for _ in range(turns_per_voice):
        round_ = list(voices)
        rng.shuffle(round_)
        if order and len(round_) > 1 and round_[0] == order[-1]:
            round_.append(round_.pop(0))
        order += round_

    def silence(seconds: float) -> bytes:
        return b"\x00\x00" * int(8000 * seconds)

    pcm, turns = silence(0.5), []
    for n, voice in enumerate(order):
        if n:
            pcm += silence(rng.uniform(0.4, 0.9))
        for k in range(rng.choice((1, 2))):
            if k:
                pcm += silence(_TURN_GAP_S)
            _name, prompt = pools[voice][used[voice] % len(pools[voice])]
            used[voice] += 1
            start_s = len(pcm) / 2 / 8000
            pcm += prompt
            turns.append(Turn(round(start_s, 4), round(len(pcm) / 2 / 8000, 4), voice))
    pcm += silence(0.5)
    path = (
        SOUNDS_CACHE / f"conversation-{'-'.join(voices)}-t{turns_per_voice}-s{seed}-o{offset}.wav"
    )
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    with wave.open(str(partial), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(pcm)
    partial.replace(path)
    return Conversation(path, tuple(voices), tuple(turns), len(pcm) / 2 / 8000)


def _need_sounds() -> None:
    import shutil

    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip(
            "real-speech tests need Debian's asterisk-core-sounds packages, and this machine "
            "has no apt-get/dpkg-deb to fetch them (not Debian or Ubuntu)"
        )


@pytest.fixture(scope="session")
def conversation():  # type: ignore[no-untyped-def]
    """conversation(voices, turns_per_voice, seed=0, offset=0) -> Conversation: real voices
    (languages of VOICE_PEOPLE) taking turns, with the true turns. Skips, as `speech` does,
    where Debian's packages cannot be had; a failed download fails the test."""
    _need_sounds()
    return conversation_clip


# Forgiveness around each reference boundary, each side (NIST's usual 0.25 s): pyannote's
# `collar` is the whole width, twice this.
DER_COLLAR_S = 0.25


def diarization_error(
    truth: tuple[Turn, ...] | list[Turn],
    found: tuple[Turn, ...] | list[Turn],
    duration_s: float,
    collar_s: float = DER_COLLAR_S,
) -> dict[str, float]:
    """pyannote.metrics' diarization error rate of `found` against `truth` over the whole
    file, speakers mapped one-to-one for the least error: {"diarization error rate",
    "missed detection", "false alarm", "confusion", "total"} (rate a fraction, the rest
    seconds of reference speech, outside the collars)."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(turns: tuple[Turn, ...] | list[Turn]) -> Annotation:
        out = Annotation()
        for n, turn in enumerate(turns):
            out[Segment(turn.start_s, turn.end_s), n] = turn.speaker
        return out

    metric = DiarizationErrorRate(collar=2 * collar_s)
    detail = metric(
        annotation(truth),
        annotation(found),
        uem=Timeline([Segment(0.0, duration_s)]),
        detailed=True,
    )
    return {k: float(v) for k, v in detail.items()}


@pytest.fixture(scope="session")
def der():  # type: ignore[no-untyped-def]
    """der(truth, found, duration_s, collar_s=DER_COLLAR_S) -> diarization_error's dict."""
    return diarization_error
