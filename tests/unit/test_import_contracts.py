"""The import-linter contracts in pyproject.toml hold, and they catch a wrong import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports puts its working directory first on sys.path: it reads the copy.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The product's packages and pyproject.toml, in a folder of their own."""
    for package in ("router", "worker_sdk"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")


def test_the_contracts_hold(copy: Path) -> None:
    result = _lint(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


WRONG = [
    ("router/core.py", "import redis", "router.core is not allowed to import redis"),
    ("worker_sdk/wire.py", "import tenacity", "worker_sdk.wire is not allowed to import tenacity"),
    ("worker_sdk/client.py", "from router import core",
     "worker_sdk is not allowed to import router"),
    ("router/demo.py", "from examples import chat", "router is not allowed to import examples"),
    ("router/store.py", "from router import redis_store",
     "router.store is not allowed to import router.redis_store"),
    ("router/redis_store.py", "from worker_sdk import memory",
     "router.redis_store is not allowed to import worker_sdk.memory"),
]
"""A wrong import in a module, and what lint-imports says about it."""


def test_each_wrong_import_breaks_a_contract(copy: Path) -> None:
    for module, line, _ in WRONG:
        _append(copy / module, line)
    result = _lint(copy)
    assert result.returncode != 0
    for _, _, broken in WRONG:  # one run for all: lint-imports reports every broken contract
        assert broken in result.stdout, result.stdout
