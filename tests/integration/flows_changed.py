"""``tests.integration.flows`` with one change, for replay: ``root`` answers the message
"hello" with an exclamation mark. Every other turn acts as before."""

from __future__ import annotations

from worker_sdk import Context, Service

from .flows import _root_message, _root_start, step

root = Service("root")
root.on_start(_root_start)
root.on_message(_root_message)

__all__ = ["root", "step"]


@root.on_result("step")
def _root_result(ctx: Context) -> None:
    assert ctx.result is not None and ctx.result.ok, ctx.result
    count = (ctx.state or 0) + 1
    mark = "!" if ctx.result.value == "HELLO" else ""
    ctx.reply(f"{ctx.result.value}{mark}#{count}", state=count)
