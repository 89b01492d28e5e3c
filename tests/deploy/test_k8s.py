"""deploy/k8s, checked without a cluster: every overlay renders with `kubectl kustomize`; core
objects validate against the Kubernetes schemas (kubernetes-validate, strict), KEDA objects
against KEDA's models (cloudcoil-models-keda), Strimzi and CloudNativePG objects against the
structural schemas in schemas/; and the manifests agree with the code: topics, consumer
groups, settings, ports, health paths."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from mxw_shared import kafka_access, topics
from mxw_shared.settings import CommonSettings
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"
OVERLAYS = ("dev", "prod", "gpu", "s3")
# The oldest Kubernetes release the manifests target (autoscaling/v2, policy/v1, restricted
# pod security and sidecar-free probes all exist there).
KUBERNETES_VERSION = "1.30.0"
CUSTOM_SCHEMAS = {
    ("kafka.strimzi.io", "Kafka"): "strimzi-kafka.json",
    ("kafka.strimzi.io", "KafkaNodePool"): "strimzi-kafkanodepool.json",
    ("kafka.strimzi.io", "KafkaTopic"): "strimzi-kafkatopic.json",
    ("kafka.strimzi.io", "KafkaUser"): "strimzi-kafkauser.json",
    ("postgresql.cnpg.io", "Cluster"): "cnpg-cluster.json",
}
# Secrets the overlays reference but do not create: CloudNativePG writes <cluster>-app; the
# service token and the S3 keys are created by the operator of the cluster (docs/deploy.md
# says how).
EXTERNAL_SECRETS = {
    "mxwhisper-service-token": {"token"},
    "mxwhisper-webhook-secret-key": {"key"},
    "mxwhisper-s3": {"access-key-id", "secret-access-key"},
}
# Credentials of the standard environments the services read besides their settings.
SECRET_STANDARD_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
CNPG_APP_SECRET_KEYS = {"uri", "username", "password", "host", "port", "dbname", "jdbc-uri"}
# Secrets Strimzi writes: one per KafkaUser (its name), and the cluster CA's certificate.
STRIMZI_USER_SECRET_KEYS = {"password", "sasl.jaas.config"}
STRIMZI_CA_SECRET_KEYS = {"ca.crt", "ca.p12", "ca.password"}
# Metadata keys of KEDA's kafka scaler (keda.sh/docs/2.16/scalers/apache-kafka).
KAFKA_TRIGGER_KEYS = {
    "bootstrapServers",
    "bootstrapServersFromEnv",
    "consumerGroup",
    "consumerGroupFromEnv",
    "topic",
    "topicFromEnv",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "scaleToZeroOnInvalidOffset",
    "excludePersistentLag",
    "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions",
    "partitionLimitation",
    "version",
    "sasl",
    "tls",
}


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind(docs, kind)}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in {"Deployment", "Job"}:
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def image_service(container: dict[str, Any]) -> str:
    match = re.fullmatch(r"mxwhisper/(\w+):.+", container["image"])
    assert match, container["image"]
    return match.group(1)


def config_map(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = by_name(docs, "ConfigMap")["mxwhisper-config"]["data"]
    return data


def effective_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the container's process sees: ConfigMaps from envFrom, then env (which wins)."""
    env: dict[str, Any] = {}
    maps = by_name(docs, "ConfigMap")
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, source  # secrets by reference, one variable each
        env.update(maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def workloads(
    docs: list[dict[str, Any]], services: dict[str, Any]
) -> Iterator[tuple[str, dict[str, Any], type[CommonSettings], dict[str, Any]]]:
    """(workload, container, settings model it reads, env) for every container we run: a
    container running another command than the image's (mxw-migrate) reads CommonSettings."""
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            code = services[image_service(container)]
            settings = code.settings_cls if "command" not in container else CommonSettings
            yield name, container, settings, effective_env(container, docs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_against_kubernetes_schemas(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    checked = 0
    for doc in rendered[overlay]:
        group = doc["apiVersion"].rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io"):
            continue  # custom resources: the tests below
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc}")
        checked += 1
    assert checked >= 36  # 6 x (Deployment, Service, SA, PDB, NetworkPolicy) and the rest


def test_strict_validation_catches_a_misspelt_field(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = json.loads(json.dumps(by_name(rendered["dev"], "Deployment")["gateway"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[overlay]
    for doc in docs:
        key = (doc["apiVersion"].split("/")[0], doc["kind"])
        if key in CUSTOM_SCHEMAS:
            schema = json.loads((SCHEMAS / CUSTOM_SCHEMAS[key]).read_text())
            jsonschema.validate(doc, schema)
    scaled = of_kind(docs, "ScaledObject")
    assert scaled
    auths = of_kind(docs, "TriggerAuthentication")
    assert auths
    for doc in scaled + auths:
        model_class = ScaledObject if doc["kind"] == "ScaledObject" else TriggerAuthentication
        model = model_class.model_validate(doc)
        # The models accept unknown keys; a round trip that loses one shows a misspelling.
        again = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        assert again == doc, f"{doc['metadata']['name']}: fields KEDA does not know"
    for doc in scaled:
        for trigger in doc["spec"]["triggers"]:
            assert trigger["type"] == "kafka"
            assert set(trigger["metadata"]) <= KAFKA_TRIGGER_KEYS


def test_custom_schemas_refuse_unknown_fields() -> None:
    schema = json.loads((SCHEMAS / "strimzi-kafkatopic.json").read_text())
    topic = {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {"name": "t", "labels": {"strimzi.io/cluster": "c"}},
        "spec": {"partitions": 3, "replicas": 1, "partition": 3},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(topic, schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_topic_in_the_code_has_its_kafka_topic(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    kafka_topics = {d["spec"]["topicName"]: d for d in of_kind(docs, "KafkaTopic")}
    assert set(kafka_topics) == set(topics.all_topics_with_dlq())
    config = config_map(docs)
    clusters = by_name(docs, "Kafka")
    brokers = sum(
        p["spec"]["replicas"]
        for p in of_kind(docs, "KafkaNodePool")
        if "broker" in p["spec"]["roles"]
    )
    # The KafkaTopic says what the services' own start-up check (ensure_topics) applies.
    declared = topics.topic_specs(
        int(config["MXW_KAFKA_PARTITIONS"]), int(config["MXW_KAFKA_REPLICATION_FACTOR"])
    )
    for want in declared:
        topic = kafka_topics[want.name]
        spec = topic["spec"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] in clusters, want.name
        assert (spec["partitions"], spec["replicas"]) == (
            want.partitions,
            want.replication_factor,
        ), want.name
        assert spec["config"] == dict(want.config), want.name
        assert spec["replicas"] <= brokers, want.name
    (cluster,) = clusters.values()
    (listener,) = cluster["spec"]["kafka"]["listeners"]
    bootstrap = f"{cluster['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    assert config["MXW_KAFKA_BOOTSTRAP_SERVERS"] == bootstrap


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_stage_consumer_scales_on_its_own_lag(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], services: dict[str, Any]
) -> None:
    docs = rendered[overlay]
    deployments = by_name(docs, "Deployment")
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind(docs, "ScaledObject")}
    partitions = {
        d["spec"]["topicName"]: d["spec"]["partitions"] for d in of_kind(docs, "KafkaTopic")
    }
    workers = {n: c for n, c in services.items() if c.consumes}
    assert workers, "no StageRunner found in the services' code"
    assert set(scaled) == set(workers)
    for name, code in workers.items():
        assert code.group_is_service_name, name
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        group = effective_env(container, docs).get("MXW_SERVICE_NAME", code.service_name)
        # One trigger per topic the stage consumes (its input, then e.g. transcript.edited).
        triggers = [t["metadata"] for t in scaled[name]["spec"]["triggers"]]
        assert tuple(meta["topic"] for meta in triggers) == code.consumes, name
        spec = scaled[name]["spec"]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], name
        for meta in triggers:
            assert meta["consumerGroup"] == group, name
            env_name = meta["bootstrapServersFromEnv"]
            assert env_name in effective_env(container, docs), name
            # A replica beyond the partition count would own no partition and do nothing.
            assert spec["maxReplicaCount"] <= partitions[meta["topic"]], name
            assert int(meta["lagThreshold"]) >= 1, name
        assert "replicas" not in deployments[name]["spec"], "the autoscaler owns replicas"
    hpas = {
        d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind(docs, "HorizontalPodAutoscaler")
    }
    assert set(hpas) == set(services) - set(workers)
    for name, hpa in hpas.items():
        assert name in deployments
        assert "replicas" not in deployments[name]["spec"], name
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_is_what_each_service_reads(
    overlay: str,
    rendered: dict[str, list[dict[str, Any]]],
    services: dict[str, Any],
    env_check: Any,
) -> None:
    docs = rendered[overlay]
    secrets = by_name(docs, "Secret")
    cnpg = {f"{name}-app" for name in by_name(docs, "Cluster")}
    kafka_users = set(by_name(docs, "KafkaUser"))
    seen = 0
    for name, container, settings, env in workloads(docs, services):
        assert env_check(set(env), settings) == set(), f"{name}: unknown settings"
        names = [item["name"] for item in container.get("env", [])]
        assert len(names) == len(set(names)), f"{name}: a variable set twice"
        assert "MXW_DATABASE_URL" in env, name
        for value in env.values():
            map_ref = value.get("configMapKeyRef") if isinstance(value, dict) else None
            if map_ref is not None:
                assert map_ref["key"] in by_name(docs, "ConfigMap")[map_ref["name"]]["data"]
            ref = value.get("secretKeyRef") if isinstance(value, dict) else None
            if ref is None:
                continue
            if ref["name"] in secrets:
                assert ref["key"] in secrets[ref["name"]]["data"], ref
            elif ref["name"] in cnpg:
                assert ref["key"] in CNPG_APP_SECRET_KEYS, ref
            elif ref["name"] in kafka_users:
                assert ref["key"] in STRIMZI_USER_SECRET_KEYS, ref
            else:
                assert ref["key"] in EXTERNAL_SECRETS[ref["name"]], ref
        seen += 1
    assert seen == len(services) + 1  # the services and the migrate Job


def secret_settings(settings: type[CommonSettings]) -> set[str]:
    """The variables of a settings model's SecretStr fields (credentials, the database URL
    with its password)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return {
        prefix + name.upper()
        for name, field in settings.model_fields.items()
        if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_secrets(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], services: dict[str, Any]
) -> None:
    # A ConfigMap is readable by anyone who may read the namespace's configuration and lands
    # in logs and diffs; credentials belong in Secrets, referenced one key at a time.
    docs = rendered[overlay]
    assert "MXW_DATABASE_URL" in secret_settings(CommonSettings)
    for config in of_kind(docs, "ConfigMap"):
        for name in config.get("data", {}):
            owners = [c.settings_cls for c in services.values()] + [CommonSettings]
            assert all(name not in secret_settings(s) for s in owners), (config, name)
            assert name not in SECRET_STANDARD_ENV, name
    for name, container, settings, _ in workloads(docs, services):
        for item in container.get("env", []):
            if item["name"] in secret_settings(settings) | SECRET_STANDARD_ENV:
                assert "value" not in item, (name, item["name"])
                assert "secretKeyRef" in item["valueFrom"], (name, item["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_get_time_to_hand_back_their_jobs(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], services: dict[str, Any]
) -> None:
    # A stopping worker lets its job finish for shutdown_grace_s, then releases the lease;
    # Kubernetes must not SIGKILL it before that (the redelivery would wait for the lease).
    docs = rendered[overlay]
    for name, container, settings, env in workloads(docs, services):
        if settings is CommonSettings:
            continue
        pod = by_name(docs, "Deployment")[name]["spec"]["template"]["spec"]
        grace = float(
            env.get("MXW_SHUTDOWN_GRACE_S", settings.model_fields["shutdown_grace_s"].default)
        )
        assert pod["terminationGracePeriodSeconds"] > grace + 5, (name, container["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_services_point_at_the_port_the_service_listens_on(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], services: dict[str, Any]
) -> None:
    docs = rendered[overlay]
    k8s_services = by_name(docs, "Service")
    for name, spec in pod_specs(docs):
        (container,) = spec["containers"]
        if "command" in container:
            continue  # the migrate Job listens on nothing
        code = services[image_service(container)]
        listens = int(effective_env(container, docs).get("MXW_PORT", code.port))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert set(ports.values()) == {listens}, name
        for probe, path in (
            ("livenessProbe", "/livez"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/livez"),
        ):
            get = container[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            assert ports.get(get["port"], get["port"]) == listens, (name, probe)
        service = k8s_services[name]["spec"]
        assert service["selector"].items() <= spec_labels(docs, name).items()
        for port in service["ports"]:
            assert ports.get(port["targetPort"], port["targetPort"]) == listens, name


def spec_labels(docs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    labels: dict[str, str] = by_name(docs, "Deployment")[deployment]["spec"]["template"][
        "metadata"
    ]["labels"]
    return labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down_and_covered(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    pdbs = of_kind(docs, "PodDisruptionBudget")
    policies = of_kind(docs, "NetworkPolicy")
    for name, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
    service_accounts = by_name(docs, "ServiceAccount")
    for name, deployment in by_name(docs, "Deployment").items():
        labels = spec_labels(docs, name)
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in service_accounts
        for group in (pdbs, policies):
            selecting = [
                d
                for d in group
                if (d["spec"].get("selector") or d["spec"]["podSelector"])["matchLabels"].items()
                <= labels.items()
            ]
            assert len(selecting) == 1, (name, [d["kind"] for d in group][:1])


# Every service's own endpoints: scraped and probed in-cluster, never public.
OWN_PATHS = ("/livez", "/readyz", "/metrics")
DENY_ALL = {"0.0.0.0/0", "::/0"}


@dataclass
class IngressRoutes:
    """The paths of every Ingress of one host as ingress-nginx serves them."""

    backends: dict[str, str]  # path -> service
    denied_paths: set[str]  # paths of an Ingress that denies every source address
    regex: bool

    def _match(self, url_path: str) -> str:
        """With use-regex on any Ingress of the host, every path is a case-insensitive
        regex anchored at the start; the longest matching one wins."""
        matching = [
            p
            for p in self.backends
            if (re.match(p, url_path, re.I) if self.regex else url_path.startswith(p))
        ]
        return max(matching, key=len)

    def route(self, url_path: str) -> str:
        return self.backends[self._match(url_path)]

    def denied(self, url_path: str) -> bool:
        return self._match(url_path) in self.denied_paths


def ingress_routes(docs: list[dict[str, Any]]) -> IngressRoutes:
    k8s_services = by_name(docs, "Service")
    ingresses = of_kind(docs, "Ingress")
    regex = any(
        i["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/use-regex") == "true"
        for i in ingresses
    )
    routes = IngressRoutes({}, set(), regex)
    hosts = set()
    for ingress in ingresses:
        annotations = ingress["metadata"].get("annotations", {})
        denylist = annotations.get("nginx.ingress.kubernetes.io/denylist-source-range", "")
        deny_all = {c.strip() for c in denylist.split(",")} >= DENY_ALL
        for rule in ingress["spec"]["rules"]:
            hosts.add(rule["host"])
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                port_names = {p["name"] for p in k8s_services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in port_names
                # Without use-regex, ingress-nginx takes an ImplementationSpecific path
                # literally.
                assert path["pathType"] == "Prefix" or regex, path
                assert path["path"] not in routes.backends, path  # one owner per path
                routes.backends[path["path"]] = backend["name"]
                if deny_all:
                    routes.denied_paths.add(path["path"])
    assert len(hosts) == 1, hosts  # one host: the regex rule spans all its Ingresses
    return routes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_l11_metrics_and_readiness_are_not_reachable_through_the_ingress(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    routes = ingress_routes(rendered[overlay])
    for path in OWN_PATHS:
        assert routes.denied(path), path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_c1_k8s_never_enables_dev_sign_in_or_the_dev_issuer(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], services: dict[str, Any]
) -> None:
    docs = rendered[overlay]
    for name, container, _, env in workloads(docs, services):
        assert "MXW_DEV_SIGN_IN" not in env, (name, container["name"])
        assert "MXW_DEV_JWKS_PATH" not in env, (name, container["name"])
    for _, spec in pod_specs(docs):
        assert not spec.get("hostNetwork"), spec
        for container in spec["containers"]:
            assert all("hostPort" not in p for p in container.get("ports", [])), container
    for service in of_kind(docs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_reaches_the_api_and_the_websocket_feed(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    routes = ingress_routes(docs)
    route = routes.route
    annotations = by_name(docs, "Ingress")["mxwhisper"]["metadata"]["annotations"]

    def concrete(template: str) -> str:
        return re.sub(r"\{\w+\}", "0b6a3c8e-6f0a-4a57-9d4e-2f1c2b3a4d5e", template)

    source = "\n".join(
        f.read_text() for f in (ROOT / "services" / "notifier" / "src").rglob("*.py")
    )
    ws_paths = re.findall(r'\.websocket\(\s*"(/[^"]*)"', source)
    http_paths = re.findall(r'\.get\(\s*"(/[^"]*)"', source)
    own = set(OWN_PATHS)
    feed_paths = [p for p in http_paths if p not in own]
    assert ws_paths  # the WebSockets
    assert feed_paths  # the SSE feed / event history
    for path in ws_paths + feed_paths:
        assert route(concrete(path)) == "notifier", path
    gateway_source = "\n".join(
        f.read_text() for f in (ROOT / "services" / "gateway" / "src").rglob("*.py")
    )
    gateway_paths = re.findall(r'\.(?:get|post|put|patch|delete)\(\s*"(/[^"]*)"', gateway_source)
    assert "/jobs/{job_id}" in gateway_paths
    for path in gateway_paths:
        assert route(concrete(path)) == "gateway", path
        assert not routes.denied(concrete(path)), path
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 60


def test_prod_tolerates_a_broker_down_and_a_lost_database_primary(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["prod"]
    (kafka,) = of_kind(docs, "Kafka")
    config = kafka["spec"]["kafka"]["config"]
    assert config["min.insync.replicas"] == 2
    assert config["default.replication.factor"] == 3
    brokers = [p for p in of_kind(docs, "KafkaNodePool") if "broker" in p["spec"]["roles"]]
    assert sum(p["spec"]["replicas"] for p in brokers) == 3
    (cluster,) = of_kind(docs, "Cluster")
    assert cluster["spec"]["instances"] == 3
    dev_topics = {d["spec"]["topicName"]: d["spec"] for d in of_kind(rendered["dev"], "KafkaTopic")}
    prod_topics = {d["spec"]["topicName"]: d["spec"] for d in of_kind(docs, "KafkaTopic")}
    assert (
        prod_topics[topics.AUDIO_UPLOADED]["partitions"]
        > dev_topics[topics.AUDIO_UPLOADED]["partitions"]
    )


def test_gpu_overlay_puts_the_listening_stages_on_a_gpu_and_scales_them_to_zero(
    rendered: dict[str, list[dict[str, Any]]], services: dict[str, Any]
) -> None:
    docs = rendered["gpu"]
    # The stages that work on the audio itself: the transcriber and the diarizer.
    listening = [n for n, c in services.items() if c.consumes == (topics.AUDIO_UPLOADED,)]
    assert {"transcriber", "diarizer"} <= set(listening)
    for name in listening:
        pod = by_name(docs, "Deployment")[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].endswith("-cuda"), name
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), name
        env = effective_env(container, docs)
        assert env["MXW_DEVICE"] == "cuda", name
        scaled = by_name(docs, "ScaledObject")[name]["spec"]
        assert scaled["minReplicaCount"] == 0, name
        # Each replica takes MXW_MAX_CONCURRENT_JOBS jobs: the lag per replica matches it.
        (trigger,) = scaled["triggers"]
        assert int(trigger["metadata"]["lagThreshold"]) == int(env["MXW_MAX_CONCURRENT_JOBS"])
        assert math.isfinite(scaled["cooldownPeriod"]), name
    # The other overlays never give the GPU image or GPUs to anything.
    for overlay in ("dev", "prod"):
        for _, spec in pod_specs(rendered[overlay]):
            for c in spec["containers"]:
                assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
                assert not c["image"].endswith("-cuda")


def test_docs_name_what_a_cluster_must_provide() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    for needed in (*EXTERNAL_SECRETS, "Strimzi", "KEDA", "CloudNativePG", *OVERLAYS):
        assert needed in text, needed


def test_s3_overlay_keeps_audio_in_the_bucket(
    rendered: dict[str, list[dict[str, Any]]], services: dict[str, Any]
) -> None:
    # Gateway (writes), transcriber and diarizer (read) name the same bucket, and nothing needs
    # a shared volume any more.
    docs = rendered["s3"]
    assert not of_kind(docs, "PersistentVolumeClaim")
    deployments = by_name(docs, "Deployment")
    stores = {}
    for name in ("gateway", "transcriber", "diarizer"):
        pod = deployments[name]["spec"]["template"]["spec"]
        assert all("persistentVolumeClaim" not in v for v in pod["volumes"]), name
        (container,) = pod["containers"]
        env = effective_env(container, docs)
        ref = env["MXW_BLOB_STORE_URL"]["configMapKeyRef"]
        stores[name] = by_name(docs, "ConfigMap")[ref["name"]]["data"][ref["key"]]
        assert {"AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env), name
        assert "blob_store_url" in services[name].settings_cls.model_fields
    assert stores["gateway"] == stores["transcriber"] == stores["diarizer"]
    assert stores["gateway"].startswith("s3://")
    # Staging copies on the gateway's emptyDir go sooner than the default hour.
    gateway_env = effective_env(
        deployments["gateway"]["spec"]["template"]["spec"]["containers"][0], docs
    )
    assert float(gateway_env["MXW_ORPHAN_BLOB_AFTER_S"]) < float(
        services["gateway"].settings_cls.model_fields["orphan_blob_after_s"].default
    )
    # The other overlays keep the shared claim and set no S3 store.
    for overlay in ("dev", "prod", "gpu"):
        assert of_kind(rendered[overlay], "PersistentVolumeClaim"), overlay
        for _, spec in pod_specs(rendered[overlay]):
            for c in spec["containers"]:
                assert "MXW_BLOB_STORE_URL" not in effective_env(c, rendered[overlay])


def kafka_users(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return by_name(docs, "KafkaUser")


def test_the_kafka_users_are_what_the_access_plan_renders() -> None:
    # Generated: `python -m mxw_shared.kafka_access kafka-users > deploy/k8s/base/kafka-users.yaml`
    committed = (ROOT / "deploy" / "k8s" / "base" / "kafka-users.yaml").read_text()
    assert committed == kafka_access.kafka_users_yaml(), "regenerate kafka-users.yaml"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_is_secured_and_each_service_signs_in_as_its_own_user(
    overlay: str, rendered: dict[str, list[dict[str, Any]]], services: dict[str, Any]
) -> None:
    docs = rendered[overlay]
    (cluster,) = of_kind(docs, "Kafka")
    kafka = cluster["spec"]["kafka"]
    (listener,) = kafka["listeners"]
    assert listener["tls"] is True
    assert listener["authentication"] == {"type": "scram-sha-512"}
    assert kafka["authorization"]["type"] == "simple"
    assert "userOperator" in cluster["spec"]["entityOperator"]
    users = kafka_users(docs)
    assert set(users) == {*kafka_access.SERVICES, kafka_access.LAG_READER.name}
    for user in users.values():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == cluster["metadata"]["name"]
    config = config_map(docs)
    assert config["MXW_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["MXW_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["MXW_KAFKA_CREATE_TOPICS"] == "false"  # KafkaTopics; no Create ACL
    ca_secret = f"{cluster['metadata']['name']}-cluster-ca-cert"
    deployments = by_name(docs, "Deployment")
    assert set(deployments) == set(services)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = effective_env(container, docs)
        # The principal is the service's own KafkaUser, its password from that user's Secret.
        assert env["MXW_KAFKA_USERNAME"] == name, name
        assert env["MXW_KAFKA_PASSWORD"] == {"secretKeyRef": {"name": name, "key": "password"}}
        assert name in users, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        cafile = Path(env["MXW_KAFKA_SSL_CAFILE"])
        ca_volume = volumes[mounts[str(cafile.parent)]]["secret"]
        assert ca_volume["secretName"] == ca_secret, name
        assert {i["path"]: i["key"] for i in ca_volume["items"]}[cafile.name] in (
            STRIMZI_CA_SECRET_KEYS
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_reads_lag_as_its_own_kafka_user(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    (auth,) = of_kind(docs, "TriggerAuthentication")
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    secrets = by_name(docs, "Secret")
    values = {
        p: base64.b64decode(secrets[r["name"]]["data"][r["key"]]).decode()
        for p, r in refs.items()
        if r["name"] in secrets
    }
    assert values == {"sasl": "scram_sha512", "tls": "enable", "username": "keda"}
    assert refs["password"] == {"parameter": "password", "name": "keda", "key": "password"}
    (cluster,) = of_kind(docs, "Kafka")
    assert refs["ca"]["name"] == f"{cluster['metadata']['name']}-cluster-ca-cert"
    assert (
        kafka_users(docs)["keda"]["spec"]
        == kafka_access.kafka_user(kafka_access.LAG_READER)["spec"]
    )
    for scaled in of_kind(docs, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
            # What it reads is what the plan lets it describe.
            group = kafka_access.Group(trigger["metadata"]["consumerGroup"])
            assert group in kafka_access.LAG_READER.watches
            assert trigger["metadata"]["topic"] in kafka_access.LAG_READER.describes


def test_the_access_plan_matches_what_the_code_consumes(services: dict[str, Any]) -> None:
    # Each worker's StageRunner topics and consumer group (its service name), as main.py
    # builds them, are what its principal may read; the admin views watch the same groups.
    from mxw_shared.stages import PIPELINE

    workers = {name: code for name, code in services.items() if code.consumes}
    assert {name: code.consumes for name, code in workers.items()} == kafka_access.STAGE_INPUTS
    for name, code in workers.items():
        assert code.group_is_service_name, name
        assert code.service_name == name
        assert kafka_access.SERVICES[name].groups == (kafka_access.Group(name),)
    assert {
        (topic, group) for group, inputs in kafka_access.STAGE_INPUTS.items() for topic in inputs
    } == set(PIPELINE.stage_groups)
