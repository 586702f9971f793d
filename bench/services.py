"""The service the routed bench runs (``cloudbunch worker bench.services:bench``).

One service does both jobs:

- a message is answered with ``reply``: the payload echoed as one output, and a new state
  of about 100 bytes (a counter and padding), as a typical stateful step would;
- started with ``{"depth": N}`` as the first payload, it opens itself until the stack holds
  N frames, each with its own ~100-byte state; the top frame then replies ``ready``.
"""

from __future__ import annotations

from typing import Any

from worker_sdk import Context, Service

STATE_PAD = "x" * 88
"""Padding that makes the msgpack of :func:`state` about 100 bytes."""
PAYLOAD = "a person's message of about forty bytes."
"""The text every measured message carries (and the service echoes)."""

bench = Service("bench")


def state(n: int) -> dict[str, Any]:
    """A ~100-byte state (msgpack) holding a counter."""
    return {"n": n, "pad": STATE_PAD}


@bench.on_start
def start(ctx: Context) -> None:
    if isinstance(ctx.args, int):
        more = ctx.args  # frames still to open above this one
    elif isinstance(ctx.payload, dict):
        more = int(ctx.payload.get("depth", 1)) - 1
    else:
        more = 0
    if more > 0:
        ctx.open("bench", more - 1, state=state(0))
    else:
        ctx.reply("ready", state=state(0))


@bench.on_message
def message(ctx: Context) -> None:
    n = ctx.state.get("n", 0) + 1 if isinstance(ctx.state, dict) else 1
    ctx.reply(ctx.payload, state=state(n))
