"""The cluster form of the compose file agrees with the code: every party is given every
RabbitMQ node and every Redis node, commits wait for a replica, the nodes form one cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from router.redis_store import split_cluster_url, take_wait_options
from worker_sdk.amqp_connect import split_urls
from worker_sdk.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "deploy" / "docker-compose.cluster.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _nodes(compose: dict[str, Any], prefix: str) -> list[str]:
    return sorted(n for n in compose["services"] if n[len(prefix):].isdigit()
                  and n.startswith(prefix))


def test_every_party_gets_every_node(compose: dict[str, Any]) -> None:
    rabbits, redises = _nodes(compose, "rabbitmq-"), _nodes(compose, "redis-")
    assert len(rabbits) == 3 and len(redises) == 6
    for name in ("router", "workers"):
        env = compose["services"][name]["environment"]
        hosts = sorted(urlsplit(u).hostname or "" for u in split_urls(env["CLOUDBUNCH_AMQP_URL"]))
        assert hosts == rabbits
        url, replicas, _ = take_wait_options(env["CLOUDBUNCH_REDIS_URL"])
        assert replicas == 1
        cluster = split_cluster_url(url)
        assert cluster is not None
        seed, others = cluster
        assert sorted([urlsplit(seed).hostname or "", *(h for h, _ in others)]) == redises
        assert env["CLOUDBUNCH_QUEUE_TYPE"] == "quorum"


def test_rabbitmq_nodes_form_one_cluster(compose: dict[str, Any]) -> None:
    conf = compose["configs"]["rabbitmq-cluster"]["content"]
    services = compose["services"]
    cookies = {services[n]["environment"]["RABBITMQ_ERLANG_COOKIE"]
               for n in _nodes(compose, "rabbitmq-")}
    assert len(cookies) == 1
    for node in _nodes(compose, "rabbitmq-"):
        assert services[node]["hostname"] == node
        assert f"= rabbit@{node}" in conf


def test_redis_nodes_are_cluster_nodes_with_replicas(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for node in _nodes(compose, "redis-"):
        command = " ".join(services[node]["command"])
        assert "--cluster-enabled yes" in command and "--appendfsync always" in command
    create = " ".join(services["redis-cluster"]["command"])
    assert "--cluster-replicas 1" in create
    assert set(services["redis-cluster"]["depends_on"]) == set(_nodes(compose, "redis-"))


def test_wait_options_are_checked() -> None:
    assert take_wait_options("redis://h/0?wait_replicas=2&x=1") == ("redis://h/0?x=1", 2, 1000)
    assert take_wait_options("redis://h/0")[1:] == (0, 1000)
    for bad in ("wait_replicas=-1", "wait_replicas=x", "wait_timeout=0"):
        with pytest.raises(ConfigError, match="at least"):
            take_wait_options(f"redis://h/0?{bad}")
