"""``cloudbunch demo --web``: the pizza bot behind the web gateway, in one process."""

from __future__ import annotations

import secrets

import aiohttp
import pytest

from tests.integration.procs import Proc, child_env, cli, eventually

from .conftest import Tab, WebHarness


async def start_demo(harness: WebHarness, *args: str) -> Proc:
    proc = await Proc.spawn("demo", cli("demo", "--web", "--no-browser", "--port",
                                        str(harness.port), *args),
                            env=child_env(CLOUDBUNCH_AMQP_URL=harness.amqp_url,
                                          CLOUDBUNCH_REDIS_URL=harness.redis_url))
    harness.procs.append(proc)

    async def up() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"demo exited with {proc.returncode}:\n{proc.output()}")
        try:
            async with aiohttp.ClientSession() as http, \
                    http.get(harness.url + "healthz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False
    await eventually(up, 30.0, "the demo's page answering")
    return proc


async def order_a_little(harness: WebHarness) -> Tab:
    tab = await Tab.open(harness.url)
    await tab.say("hi", secrets.token_hex(8))
    await tab.wait_text("Welcome to Bunch Pizza")
    await tab.say("order", secrets.token_hex(8), payload="order")
    await tab.wait_text("Which pizza")
    stack = await tab.wait(lambda f: f["type"] == "stack" and len(f["frames"]) == 2)
    assert [f["service"] for f in stack["frames"]] == ["pizza", "menu"]
    return tab


async def test_demo_web_embedded(bare_web: WebHarness) -> None:
    proc = await start_demo(bare_web, "--embedded")
    tab = await order_a_little(bare_web)
    await tab.close()
    assert "embedded in-memory engine" in proc.output()
    assert f"http://127.0.0.1:{bare_web.port}/" in proc.output()
    assert await proc.stop() == 0


@pytest.mark.infra
async def test_demo_web_on_the_real_servers(bare_web: WebHarness) -> None:
    proc = await start_demo(bare_web, "--real", "--namespace", bare_web.ns)
    tab = await order_a_little(bare_web)
    await tab.close()
    assert "using RabbitMQ" in proc.output()
    assert await proc.stop() == 0
