"""Importing the pure parts loads no adapter library; the SDK's names load on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = "{'aio_pika', 'aiormq', 'redis', 'tenacity', 'aiohttp'}"


def _heavy_after(statement: str) -> str:
    code = (f"import sys; {statement}; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY}))")
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.parametrize("statement", ["import router.core", "import worker_sdk.wire",
                                       "import worker_sdk", "from worker_sdk import Service",
                                       "import router.ingest"])
def test_a_pure_or_light_import_loads_no_adapter_library(statement: str) -> None:
    assert _heavy_after(statement) == "[]"


def test_the_amqp_adapter_loads_when_asked_for() -> None:
    assert "aio_pika" in _heavy_after("from worker_sdk import AmqpBroker")


def test_every_public_name_of_the_sdk_resolves() -> None:
    import worker_sdk

    for name in worker_sdk.__all__:
        assert getattr(worker_sdk, name) is not None
    assert set(worker_sdk.__all__) <= set(dir(worker_sdk))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        worker_sdk.Nope  # noqa: B018
