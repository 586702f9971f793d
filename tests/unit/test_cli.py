"""The ``cloudbunch`` command's surface: options from the one declaration per setting, the
environment, one error style for every command, ``--version``, ``-v`` anywhere, and
registering a subcommand from another module."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from router import cli
from router.config import RouterConfig, ServerSettings, settings_table
from worker_sdk.errors import ConfigError
from worker_sdk.settings import Settings, WorkerSettings, declarations

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cloudbunch ARGS`` in a child process, with no CLOUDBUNCH_* variable but ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUNCH_")}
    return subprocess.run([sys.executable, "-m", "router.cli", *args], cwd=REPO,
                          env=base | (env or {}), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------- declarations


def test_every_field_of_every_settings_class_is_declared() -> None:
    for cls in (Settings, WorkerSettings, ServerSettings, RouterConfig):
        declared = [d.name for d in declarations(cls)]
        assert declared == [f.name for f in dataclasses.fields(cls)], cls


def test_router_config_extends_the_connection_settings_not_copies_them() -> None:
    names = {cls: {d.name: d for d in declarations(cls)} for cls in (Settings, RouterConfig)}
    for name, decl in names[Settings].items():
        assert names[RouterConfig][name] == decl


def test_from_env_takes_option_then_variable_then_default() -> None:
    env = {"CLOUDBUNCH_ROOT": "menu", "CLOUDBUNCH_MAX_DEPTH": "7", "CLOUDBUNCH_SEQ_HOLD": "0.5"}
    config = RouterConfig.from_env(env, max_depth=9)
    assert (config.root, config.max_depth, config.seq_hold, config.turn_timeout) == (
        "menu", 9, 0.5, 30.0)
    assert WorkerSettings.from_env({"CLOUDBUNCH_PREFETCH": "3"}).prefetch == 3


@pytest.mark.parametrize(("env", "message"), [
    ({"CLOUDBUNCH_MAX_DEPTH": "deep"},
     "--max-depth / CLOUDBUNCH_MAX_DEPTH must be a whole number, not 'deep'"),
    ({"CLOUDBUNCH_TURN_TIMEOUT": "0"},
     "--turn-timeout / CLOUDBUNCH_TURN_TIMEOUT must be above 0, not 0.0"),
    ({"CLOUDBUNCH_SEQ_HOLD": "nan"},
     "--seq-hold / CLOUDBUNCH_SEQ_HOLD must be a finite number, not nan"),
    ({"CLOUDBUNCH_QUEUE_TYPE": "lazy"},
     "--queue-type / CLOUDBUNCH_QUEUE_TYPE must be 'quorum' or 'classic', not 'lazy'"),
    ({"CLOUDBUNCH_AMQP_URL": "http://x"},
     "--amqp-url / CLOUDBUNCH_AMQP_URL must start with amqp:// or amqps://, not 'http://x'"),
    ({"CLOUDBUNCH_NAMESPACE": "a b"}, "namespace must be a non-empty word"),
    ({}, "root is required: pass --root SERVICE or set CLOUDBUNCH_ROOT"),
])
def test_a_bad_setting_is_one_sentence_naming_option_and_variable(
        env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:  # {} leaves out the root too
        RouterConfig.from_env({"CLOUDBUNCH_ROOT": "r", **env} if env else {})
    assert message in str(caught.value)


def test_readme_settings_table_is_the_declarations() -> None:
    """Regenerate with ``python -m router.config`` when a setting changes."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert settings_table() in readme


# ---------------------------------------------------------------------------- the options


@click.command()
@cli.settings_options(RouterConfig, only=("root", "max_depth", "namespace"))
def show(config: RouterConfig) -> None:
    click.echo(f"{config.root} {config.max_depth} {config.namespace} {config.turn_timeout}")


def test_options_come_from_the_declaration_with_env_and_default() -> None:
    runner = CliRunner()
    result = runner.invoke(show, ["--root", "a"], env={"CLOUDBUNCH_MAX_DEPTH": "4"})
    assert result.output == "a 4 cb 30.0\n"
    result = runner.invoke(show, ["--root", "a", "--max-depth", "5"],
                           env={"CLOUDBUNCH_MAX_DEPTH": "4"})
    assert result.output == "a 5 cb 30.0\n"
    result = runner.invoke(show, [], env={"CLOUDBUNCH_ROOT": "b"})
    assert result.output == "b 32 cb 30.0\n"


def test_router_help_lists_every_setting_with_its_variable() -> None:
    text = CliRunner().invoke(cli.cli, ["router", "--help"], terminal_width=200).output
    for decl in declarations(RouterConfig):
        assert re.search(rf"{decl.option} {decl.metavar}\s+{re.escape(decl.help)}", text), decl
        assert decl.env in text


def test_worker_takes_the_worker_settings_only() -> None:
    text = CliRunner().invoke(cli.cli, ["worker", "--help"], terminal_width=200).output
    assert "--prefetch N" in text and "CLOUDBUNCH_PREFETCH" in text
    assert "--root" not in text and "--redis-url" not in text


# ---------------------------------------------------------------------------- the command


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0
    assert re.fullmatch(r"cloudbunch \d+\.\d+\.\d+\S*\n", proc.stdout)


def test_verbose_is_accepted_after_the_subcommand() -> None:
    # A bad URL fails before connecting: the point is that -v is not refused.
    for args in (("-v", "router"), ("router", "-v"), ("router", "--verbose")):
        proc = run(*args, "--root", "r", "--amqp-url", "http://x")
        assert proc.returncode == 1, proc.stderr
        assert one_line(proc).startswith("cloudbunch router: --amqp-url")


@pytest.mark.parametrize(("args", "env", "code", "start"), [
    (("router",), {}, 1, "cloudbunch router: root is required"),
    (("router", "--root", "r"), {"CLOUDBUNCH_MAX_DEPTH": "x"}, 2,
     "cloudbunch router: invalid value for '--max-depth' (env var: 'CLOUDBUNCH_MAX_DEPTH')"),
    (("router", "--root", "r", "--max-depth", "0"), {}, 1,
     "cloudbunch router: --max-depth / CLOUDBUNCH_MAX_DEPTH must be 1 or more"),
    (("router", "--bogus"), {}, 2, "cloudbunch router: no such option '--bogus'"),
    (("routr",), {}, 2, "cloudbunch: no such command 'routr'. Did you mean 'router'?"),
    (("worker", "nocolon"), {}, 1, "cloudbunch worker: 'nocolon' is not MODULE:ATTRIBUTE"),
    (("worker", "examples.tutorial:greeter"), {"CLOUDBUNCH_PREFETCH": "0"}, 1,
     "cloudbunch worker: --prefetch / CLOUDBUNCH_PREFETCH must be 1 or more"),
    (("demo", "--embedded", "--script", "/nonexistent"), {}, 1,
     "cloudbunch demo: cannot read script '/nonexistent'"),
    (("session", "show", "s", "--redis-url", "http://x"), {}, 1,
     "cloudbunch session show: --redis-url / CLOUDBUNCH_REDIS_URL must start with"),
    (("purge", "--namespace", "x y", "--yes"), {}, 1,
     "cloudbunch purge: namespace must be a non-empty word"),
])
def test_every_command_fails_in_one_line_with_its_name(
        args: tuple[str, ...], env: dict[str, str], code: int, start: str) -> None:
    proc = run(*args, env=env)
    assert proc.returncode == code, proc.stderr
    assert one_line(proc).startswith(start)


def test_a_subcommand_from_another_module_is_one_line(monkeypatch: Any) -> None:
    monkeypatch.setitem(cli.COMMANDS, "hello", "tests.unit.test_cli:hello_command")
    runner = CliRunner()
    assert "hello" in runner.invoke(cli.cli, ["--help"]).output
    result = runner.invoke(cli.cli, ["hello", "-v", "--namespace", "n1"])
    assert result.output == "hello n1 verbose=True\n"
    with pytest.raises(cli.Failed) as caught:
        runner.invoke(cli.cli, ["hello", "--fail"], standalone_mode=False,
                      catch_exceptions=False)
    assert (caught.value.path, caught.value.message) == ("cloudbunch hello", "it failed")


@click.command("hello")
@cli.settings_options(Settings, only=("namespace",))
@click.option("--fail", is_flag=True)
def hello_command(config: Settings, fail: bool) -> None:
    if fail:
        raise ConfigError("it failed")
    click.echo(f"hello {config.namespace} verbose={cli.is_verbose()}")
