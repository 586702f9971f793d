"""The cluster form of the Kubernetes manifests (deploy/k8s-cluster, a kustomize overlay of
deploy/k8s): built here as kustomize builds it (its patches merged into the base's objects),
then validated offline like the base and checked against the code: every party is given the
three RabbitMQ nodes, the router a Redis Cluster with wait_replicas=1, and KEDA one host."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from router.redis_store import split_cluster_url, take_wait_options
from worker_sdk.amqp_connect import split_urls

from .test_k8s import K8S, KEDA_SCHEMAS, _docs, _validate_core, _validate_keda

OVERLAY = K8S.parent / "k8s-cluster"


def _merge(base: Any, patch: Any) -> Any:
    """A strategic merge patch as kustomize applies these: maps merged key by key, anything
    else (lists of custom resources included) replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return copy.deepcopy(patch)


def _build(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        path = root / resource
        if path.is_dir():
            objects |= _build(path)
        else:
            for doc in _docs(path):
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in objects, f"{key} defined twice"
                objects[key] = doc
    for patch in kustomization.get("patches", []):
        for doc in _docs(root / patch["path"]):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key in objects, f"{patch['path']} patches {key}, which the base lacks"
            objects[key] = _merge(objects[key], doc)
    return objects


@pytest.fixture(scope="module")
def built() -> dict[tuple[str, str], dict[str, Any]]:
    return _build(OVERLAY)


def test_the_overlay_lists_every_file() -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    listed = {OVERLAY / r for r in kustomization["resources"] if not r.startswith("..")}
    listed |= {OVERLAY / p["path"] for p in kustomization["patches"]}
    assert sorted(listed) == sorted(p for p in OVERLAY.glob("*.yaml")
                                    if p.name != "kustomization.yaml")


def test_built_core_kinds_are_valid(built: dict[tuple[str, str], dict[str, Any]],
                                    tmp_path: Path) -> None:
    files = []
    for n, (key, obj) in enumerate(sorted(built.items())):
        if key[0] not in KEDA_SCHEMAS:
            files.append(tmp_path / f"{n}.yaml")
            files[-1].write_text(yaml.safe_dump(obj))
    assert len(files) > 10
    proc = _validate_core(files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", sorted(KEDA_SCHEMAS))
def test_built_keda_kinds_are_valid(built: dict[tuple[str, str], dict[str, Any]],
                                    tmp_path: Path, kind: str) -> None:
    files = []
    for (k, name), obj in built.items():
        if k == kind:
            files.append(tmp_path / f"{name}.yaml")
            files[-1].write_text(yaml.safe_dump(obj))
    assert files
    proc = _validate_keda(kind, files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _secrets(built: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {name: obj["stringData"] for (kind, name), obj in built.items() if kind == "Secret"}


def test_every_party_gets_the_three_rabbitmq_nodes(
        built: dict[tuple[str, str], dict[str, Any]]) -> None:
    parties = {n: s for n, s in _secrets(built).items() if "CLOUDBUNCH_AMQP_URL" in s}
    assert len(parties) == 7  # the router and the six example services
    for name, data in parties.items():
        urls = split_urls(data["CLOUDBUNCH_AMQP_URL"])
        assert len({urlsplit(u).hostname for u in urls}) == 3, name
        assert len({urlsplit(u).username for u in urls}) == 1, "one user per party"


def test_the_router_gets_a_redis_cluster_with_wait_replicas(
        built: dict[tuple[str, str], dict[str, Any]]) -> None:
    url, replicas, timeout = take_wait_options(
        _secrets(built)["cloudbunch-router"]["CLOUDBUNCH_REDIS_URL"])
    assert replicas == 1 and timeout > 0
    cluster = split_cluster_url(url)
    assert cluster is not None
    assert len(cluster[1]) + 1 == 6  # 3 masters and their replicas, every one a seed


def test_keda_reads_each_queue_through_one_host_with_the_services_user(
        built: dict[tuple[str, str], dict[str, Any]]) -> None:
    secrets = _secrets(built)
    auths = {name: obj for (kind, name), obj in built.items()
             if kind == "TriggerAuthentication"}
    assert len(auths) == 6
    for name, auth in auths.items():
        (ref,) = auth["spec"]["secretTargetRef"]
        host = secrets[ref["name"]][ref["key"]]
        assert len(split_urls(host)) == 1, f"{name}: KEDA takes one host"
        service = name.removeprefix("cloudbunch-worker-")
        assert urlsplit(host).username == f"cb-service-{service}"
