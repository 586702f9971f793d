"""The Kubernetes manifests of deploy/k8s: valid for the API server and KEDA, and in step with
the code (services, queues, variables, probes, the contract's 10 s stop).

Validation is offline: ``kubernetes-validate`` carries the core kinds' schemas, KEDA's kinds are
checked with ``check-jsonschema`` against its CRD schemas vendored in tests/schemas/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from router import demo_flow as pizza
from router.config import RouterConfig
from worker_sdk import Service, wire
from worker_sdk.settings import WorkerSettings, declarations

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = ROOT / "tests" / "schemas"
KEDA_SCHEMAS = {"ScaledObject": SCHEMAS / "keda-scaledobject-v1alpha1.json",
                "TriggerAuthentication": SCHEMAS / "keda-triggerauthentication-v1alpha1.json"}
PROBE_PORT = "metrics"


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]'"
    return found


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in _files():
        for doc in _docs(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def _core_files() -> list[Path]:
    return [p for p in _files() if all(d["kind"] not in KEDA_SCHEMAS for d in _docs(p))]


def _validate_core(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("kubernetes-validate"), "--strict", "--quiet",
                           *map(str, paths)], capture_output=True, text=True)


def _validate_keda(kind: str, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("check-jsonschema"), "--schemafile", str(KEDA_SCHEMAS[kind]),
                           *map(str, paths)], capture_output=True, text=True)


def test_core_kinds_are_valid() -> None:
    files = _core_files()
    assert len(files) >= 3
    proc = _validate_core(files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_core_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    bad = tmp_path / "router.yaml"
    bad.write_text((K8S / "router.yaml").read_text().replace("replicas: 2", "replica: 2"))
    assert _validate_core([bad]).returncode != 0


@pytest.mark.parametrize("kind", sorted(KEDA_SCHEMAS))
def test_keda_kinds_are_valid(kind: str) -> None:
    files = [p for p in _files() if any(d["kind"] == kind for d in _docs(p))]
    assert files
    for path in files:
        assert len(_docs(path)) == 1, f"{path}: one {kind} per file (check-jsonschema)"
    proc = _validate_keda(kind, files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_keda_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    bad = tmp_path / "so.yaml"
    bad.write_text((K8S / "workers" / "menu.scaledobject.yaml").read_text()
                   .replace("minReplicaCount", "minReplicas"))
    assert _validate_keda("ScaledObject", [bad]).returncode != 0


def test_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = sorted(K8S / r for r in kustomization["resources"])
    assert listed == _files()


def _example_services() -> list[str]:
    return sorted(v.name for v in vars(pizza).values() if isinstance(v, Service))


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(deployment)["containers"]
    return container  # type: ignore[no-any-return]


def _env_sources(objects: dict[tuple[str, str], dict[str, Any]],
                 deployment: dict[str, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    for source in _container(deployment)["envFrom"]:
        if "configMapRef" in source:
            values |= objects[("ConfigMap", source["configMapRef"]["name"])]["data"]
        else:
            values |= objects[("Secret", source["secretRef"]["name"])]["stringData"]
    return values


def test_router_deployment(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    router = objects[("Deployment", "cloudbunch-router")]
    assert router["spec"]["replicas"] >= 2
    pod = _pod(router)
    # The contract's stop takes at most 10 s: SIGKILL must come later.
    assert pod["terminationGracePeriodSeconds"] > 10
    container = _container(router)
    assert container["command"] == ["cloudbunch", "router"]
    assert {"requests", "limits"} <= set(container["resources"])
    env = _env_sources(objects, router)
    assert env["CLOUDBUNCH_ROOT"] in _example_services()
    pdb = objects[("PodDisruptionBudget", "cloudbunch-router")]
    assert pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        router["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("name", ["cloudbunch-router"] + [
    f"cloudbunch-worker-{s}" for s in _example_services()])
def test_probes_and_scraping_use_the_metrics_port(
        objects: dict[tuple[str, str], dict[str, Any]], name: str) -> None:
    deployment = objects[("Deployment", name)]
    container = _container(deployment)
    (port,) = container["ports"]
    assert port["name"] == PROBE_PORT
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": PROBE_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": PROBE_PORT}
    env = _env_sources(objects, deployment)
    assert int(env["CLOUDBUNCH_METRICS_PORT"]) == port["containerPort"]
    notes = deployment["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == port["containerPort"]
    assert notes["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("service", _example_services())
def test_each_example_service_has_workers_scaled_on_its_queue(
        objects: dict[tuple[str, str], dict[str, Any]], service: str) -> None:
    name = f"cloudbunch-worker-{service}"
    deployment = objects[("Deployment", name)]
    assert _container(deployment)["command"] == ["cloudbunch", "worker",
                                                 f"router.demo_flow:{service}"]
    env = _env_sources(objects, deployment)
    namespace = env["CLOUDBUNCH_NAMESPACE"]
    assert f"-service-{service}:" in env["CLOUDBUNCH_AMQP_URL"], "the service's own user"
    scaled = objects[("ScaledObject", name)]["spec"]
    assert scaled["scaleTargetRef"]["name"] == name
    assert scaled["minReplicaCount"] >= 1  # a service's queue exists only once a worker ran
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert trigger["metadata"]["queueName"] == wire.service_queue(namespace, service)
    assert "host" not in trigger["metadata"], "the host comes from a Secret"
    auth = objects[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    assert ref["key"] in objects[("Secret", ref["name"])]["stringData"]


def test_secrets_follow_the_users_script(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    script = (ROOT / "deploy" / "rabbitmq-users.sh").read_text()
    assert '"$prefix-router"' in script and '"$prefix-service-$name"' in script
    users = {re.search(r"amqp://([^:]+):", s["stringData"]["CLOUDBUNCH_AMQP_URL"]).group(1)  # type: ignore[union-attr]
             for (kind, _), s in objects.items() if kind == "Secret"}
    assert users == {"cb-router"} | {f"cb-service-{s}" for s in _example_services()}


def test_every_variable_is_read_by_the_code(
        objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    source = "\n".join(p.read_text() for d in ("router", "worker_sdk")
                       for p in (ROOT / d).rglob("*.py"))
    names: set[str] = set()
    for (kind, _), obj in objects.items():
        if kind in ("ConfigMap", "Secret"):
            names |= set(obj.get("data", {})) | set(obj.get("stringData", {}))
    for name in names:
        declared = {d.env for cls in (RouterConfig, WorkerSettings) for d in declarations(cls)}
        assert name in declared or f'"{name}"' in source, f"nothing reads {name}"
