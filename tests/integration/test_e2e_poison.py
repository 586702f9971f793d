"""Nothing a body carries makes the router loop (PROTOCOL.md guarantee 8, last paragraph).

A ``reply_to`` the broker cannot take (over 255 bytes, RabbitMQ's direct reply-to) or that
names no queue yields exactly one dead letter or one dropped notice; the delivery is
acknowledged once, and the router goes on serving other sessions at once.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from .procs import Harness, RawService, eventually, pack
from .test_e2e_actions import deploy, start_root
from .test_e2e_bad_input import dead, still_works

pytestmark = pytest.mark.infra

LONG_256 = "q" * 256
LONG_300 = "é" * 150  # 150 code points, 300 bytes of UTF-8
# RabbitMQ 3.10 closes the publisher's whole connection (541 INTERNAL_ERROR) on a publish
# to a direct reply-to name whose channel part it cannot decode.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to.abcd.x"


def stats(output: str) -> dict[str, int]:
    """The counters of the router's last ``event=router_stopped`` log line."""
    lines = [line for line in output.splitlines() if "event=router_stopped" in line]
    assert lines, output[-2000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


async def test_reply_to_the_broker_cannot_take_never_loops(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A")
    a = s["A"]
    router = e2e.procs[-1]
    await e2e.watch_dead()
    await start_root(front, a, "bystander")
    no_queue = f"{e2e.ns}.client.nobody"
    bodies: list[bytes] = []

    # Invalid, with or without a valid rest: one dead letter each, and no notice (a reply_to
    # over 255 bytes is itself invalid and unusable).
    n = 0
    for reply_to in (LONG_256, LONG_300):
        for rest_valid in (False, True):
            n += 1
            body_map: dict[str, Any] = dict(front.body("s", "x"), reply_to=reply_to)
            if not rest_valid:
                body_map["v"] = 2
            body = pack(body_map)
            bodies.append(body)
            await e2e.publish(e2e.ingress, body)
            await dead(e2e, body, "invalid", e2e.ingress)
            letter = await e2e.dead_letter(body)
            if rest_valid:
                assert "reply_to" in str(letter.headers["x-cb-detail"]), letter.headers
            await still_works(front, a, n)

    # Invalid rest, reply_to usable but naming no queue / refused by RabbitMQ: one dead letter,
    # and its invalid_message notice is dropped.
    for reply_to in (no_queue, DIRECT_REPLY_TO):
        n += 1
        body = pack(dict(front.body("s", "x"), reply_to=reply_to, seq=0))
        bodies.append(body)
        await e2e.publish(e2e.ingress, body)
        await dead(e2e, body, "invalid", e2e.ingress)
        await still_works(front, a, n)

    # Valid: the chain runs; its notices are dropped, the session is kept, others go on.
    for session, reply_to, outputs in (("lost", no_queue, ["o1"]),
                                       ("direct", DIRECT_REPLY_TO, ["o1", "o2"])):
        n += 1
        await e2e.publish(e2e.ingress, pack(dict(front.body(session, "hi"),
                                                 reply_to=reply_to)))
        d = await a.next()
        assert d["session"] == session and d["event"] == "start", d
        await a.reply(d, "reply", state="kept", output=outputs)
        await e2e.idle(session)
        assert await e2e.stack(session) == [("A", "kept")]
        await still_works(front, a, n)

    # Every delivery was acknowledged once: nothing is left on NS.ingress after the router
    # stops (it hands back what it did not acknowledge), and each body was dead-lettered once.
    assert await router.stop() == 0
    assert await e2e.message_count(e2e.ingress) == 0
    await eventually(_dead_drained(e2e), 5.0, "NS.dead consumed")
    copies = Counter(letter.body for letter in e2e.dead_letters)
    assert [copies[body] for body in bodies] == [1] * len(bodies), copies
    counters = stats(router.output())
    assert counters.get("publishes_refused") == 1 + 2, counters
    assert counters.get("notices_dropped") == 1 + 1 + 1 + 2, counters
    assert counters.get("dead_letters") == len(bodies), counters
    await _nothing_more(a)


def _dead_drained(e2e: Harness) -> Any:
    async def check() -> bool:
        return await e2e.message_count(e2e.dead) == 0
    return check


async def _nothing_more(a: RawService) -> None:
    await a.expect_none(0.1)
