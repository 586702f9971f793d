"""The deployment files agree with the code: compose services, commands, images, policies.

Docker is not needed: the files are parsed and every reference in them (console script,
options, variables, worker specs, mounted files) is checked against the repository.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
APP_SERVICES = ("router", "workers")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cli_variables() -> dict[str, str]:
    """Option -> variable, from the router options table of docs/protocol.md."""
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*`(--[a-z-]+)`\s*\|\s*`(CLOUDBUNCH_[A-Z_]+)`\s*\|", text, re.M)
    assert rows, "docs/protocol.md has no router options table"
    return dict(rows)


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "use the exec form (a list) so no shell is involved"
    return [str(part) for part in command]


def _help(subcommand: str) -> str:
    """`cloudbunch SUBCOMMAND --help`, run through the console script's entry point."""
    code = ("import sys\nfrom router.cli import main\n"
            f"sys.argv = ['cloudbunch', {subcommand!r}, '--help']\n"
            "sys.exit(main())\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"cloudbunch {subcommand} --help failed:\n{proc.stderr}"
    return proc.stdout


def test_services_present(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("rabbitmq", "redis", *APP_SERVICES):
        assert name in services, f"service {name!r} missing"
    assert services["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert services["redis"]["image"].startswith("redis:7")
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"


def test_infrastructure_has_healthchecks_that_apps_wait_for(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("rabbitmq", "redis"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["rabbitmq"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"


def test_redis_persists_with_fsync(compose: dict[str, Any]) -> None:
    # Guarantee 3 holds across a Redis restart only with an fsync'ed append-only file.
    command = " ".join(_command(compose["services"]["redis"]))
    assert re.search(r"--appendonly\s+yes", command)
    assert re.search(r"--appendfsync\s+always", command)
    assert any(str(v).endswith(":/data") for v in compose["services"]["redis"]["volumes"])


def test_app_commands_use_the_console_script(compose: dict[str, Any],
                                             pyproject: dict[str, Any]) -> None:
    scripts = pyproject["project"]["scripts"]
    for name, subcommand in zip(APP_SERVICES, ("router", "worker"), strict=True):
        command = _command(compose["services"][name])
        assert command[0] in scripts, f"{name}: {command[0]!r} is not a console script"
        assert command[1] == subcommand


def test_router_options_exist(compose: dict[str, Any], cli_variables: dict[str, str]) -> None:
    command = _command(compose["services"]["router"])
    options = [part.split("=", 1)[0] for part in command[2:] if part.startswith("--")]
    assert "--root" in options
    help_text = _help("router")
    for option in options:
        assert option in cli_variables, f"router option {option} is not in the contract"
        assert option in help_text, f"cloudbunch router does not accept {option}"


def test_worker_subcommand_exists() -> None:
    help_text = _help("worker")
    assert "usage" in help_text.lower()


def test_environment_names_known_variables(compose: dict[str, Any],
                                           cli_variables: dict[str, str]) -> None:
    known = set(cli_variables.values())
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        assert isinstance(env, dict)
        for variable in env:
            if variable.startswith("CLOUDBUNCH_"):
                assert variable in known, f"{name}: unknown variable {variable}"
        # Every party must agree on these, or queue declarations clash.
        assert env["CLOUDBUNCH_QUEUE_TYPE"] in ("quorum", "classic")
        assert env["CLOUDBUNCH_NAMESPACE"] == "cb"
        amqp = urlsplit(env["CLOUDBUNCH_AMQP_URL"])
        assert amqp.scheme == "amqp" and amqp.hostname in compose["services"]
        # The broker refuses guest from other hosts: the URL names the user the broker creates.
        rabbit_env = compose["services"]["rabbitmq"]["environment"]
        assert amqp.username == rabbit_env["RABBITMQ_DEFAULT_USER"]
        assert amqp.password == rabbit_env["RABBITMQ_DEFAULT_PASS"]
    redis = urlsplit(compose["services"]["router"]["environment"]["CLOUDBUNCH_REDIS_URL"])
    assert redis.scheme == "redis" and redis.hostname in compose["services"]


def test_workers_serve_every_example_service(compose: dict[str, Any]) -> None:
    from worker_sdk.service import Service

    specs = _command(compose["services"]["workers"])[2:]
    assert specs, "the worker command names no service"
    served = []
    for spec in specs:
        assert not spec.startswith("-"), f"unexpected worker option {spec}"
        module_name, _, attr = spec.partition(":")
        assert attr, f"worker spec {spec!r} is not module:attr"
        obj = getattr(importlib.import_module(module_name), attr)
        assert isinstance(obj, Service), f"{spec} is not a worker_sdk Service"
        served.append(obj)
    pizza = importlib.import_module("router.demo_flow")
    assert {id(s) for s in served} == {id(s) for s in pizza.SERVICES}
    router_command = _command(compose["services"]["router"])
    root = router_command[router_command.index("--root") + 1]
    assert root == pizza.ROOT
    assert root in {s.name for s in served}


def test_replicas(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["deploy"]["replicas"] == 2
        assert "container_name" not in service  # a fixed name forbids replicas
        # SIGTERM gives a replica 10 s to finish; the grace period must be longer.
        grace = re.fullmatch(r"(\d+)s", str(service["stop_grace_period"]))
        assert grace and int(grace.group(1)) > 10


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).resolve().exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file()


def test_policies_cover_the_consumed_queues() -> None:
    definitions = json.loads((DEPLOY / "rabbitmq-definitions.json").read_text(encoding="utf-8"))
    work = {p["name"]: p for p in definitions["policies"]}["cb-work"]
    pattern = re.compile(work["pattern"])
    for queue in ("cb.ingress", "cb.replies", "cb.service.pizza", "cb.service.payment"):
        assert pattern.search(queue), queue
    for queue in ("cb.dead", "cb.chat.1234", "xcb.ingress"):
        assert not pattern.search(queue), queue
    assert work["definition"]["dead-letter-routing-key"] == "cb.dead"
    assert work["definition"]["delivery-limit"] >= 1


def test_dockerfile_installs_the_distribution(pyproject: dict[str, Any]) -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", text)
    copied = " ".join(re.findall(r"^COPY (.+)$", text, re.M))
    # Subpackages (router.channels) come with their top-level folder.
    for package in {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}:
        assert re.search(rf"\b{package}\b", copied), f"Dockerfile does not copy {package}/"
    readme = pyproject["project"].get("readme")
    if readme:
        assert readme in copied, "setuptools needs the readme to build"


async def test_demo_script_walks_the_whole_flow() -> None:
    """The script the deployment plays, through the real router core in memory."""
    from examples.chat import script_lines
    from router import demo_flow as pizza
    from router.testing import FlowTest

    lines = script_lines((ROOT / "router" / "demo_script.txt").read_text(encoding="utf-8"))
    shown: list[tuple[str, list[Any], list[str]]] = []
    async with FlowTest(pizza.SERVICES, root=pizza.ROOT) as flow:
        for line in lines:
            out = await flow.say(line)
            shown.append((line, out, await flow.stack()))

    def after(line: str, nth: int = 1) -> tuple[list[str], list[str]]:
        hits = [(out, stack) for said, out, stack in shown if said == line]
        out, stack = hits[nth - 1]
        return [str(o) for o in out], stack

    # order was replaced by checkout (replace), which opened address (open).
    out, stack = after("cola")
    assert stack == ["pizza", "menu", "checkout", "address"]
    # help passed down from address to the root (pass), answered as a digression (reply).
    out, stack = after("help", 2)
    assert stack == ["pizza", "menu", "checkout", "address"]
    assert any("back to your order" in o for o in out)
    # The declined card (fail) is caught by checkout, which offers to retry.
    declined = next(out for said, out, _ in shown if said.replace(" ", "").endswith("0000"))
    assert any("declined" in str(o) for o in declined)
    # The good card closes payment, checkout and menu (close) up to the root.
    out, stack = after("4242 4242 4242 4242")
    assert stack == ["pizza"]
    assert any("Order #1 confirmed" in o for o in out)
    # cancel at the address form discards the frames above the root.
    out, stack = after("cancel")
    assert stack == ["pizza"]
    assert any("cancelled" in o for o in out)
    assert shown[-1][1][-1] == "<end>" and shown[-1][2] == []
