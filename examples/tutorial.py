"""The README's tutorial: a greeter that asks for a name through a child service.

Run it for real with ``cloudbunch worker examples.tutorial:greeter examples.tutorial:ask_name``
and ``cloudbunch router --root greeter``; test it in memory with ``router.testing.FlowTest``
(see tests/unit/test_tutorial.py).
"""

from __future__ import annotations

from worker_sdk import Context, Service

greeter = Service("greeter")
ask_name = Service("ask_name")


@greeter.on_start
def greet(ctx: Context) -> None:
    ctx.open("ask_name", {"prompt": "Hello! What is your name?"}, state={"visits": 1})


@greeter.on_result("ask_name")
def named(ctx: Context) -> None:
    result = ctx.result
    assert result is not None
    if not result.ok:
        # on_result gets the child's failure too (a crash, a timeout, ask_name not served):
        # hand it up as an exception would, rather than greet "None".
        ctx.propagate()
        return
    ctx.reply(f"Nice to meet you, {result.value}!", state=ctx.state | {"name": result.value})


@greeter.on_message
def chat(ctx: Context) -> None:
    if ctx.bubbled and ctx.payload == "help":
        # A digression: the child that passed "help" stays open and gets the next message.
        ctx.reply("I ask your name so that I can greet you properly.")
    elif ctx.payload == "bye":
        ctx.close(ctx.state["name"])
    else:
        ctx.reply(f"You said {ctx.payload!r}, {ctx.state['name']}. Say 'bye' to leave.")


@ask_name.on_start
def ask(ctx: Context) -> None:
    # idle=60: if the person says nothing for a minute, on_idle below gets an idle event.
    ctx.reply(ctx.args["prompt"], state={"tries": 0}, idle=60)


@ask_name.on_idle
def remind(ctx: Context) -> None:
    ctx.reply("Still there? What is your name?")  # no idle= this time: one reminder only


@ask_name.on_message
def answer(ctx: Context) -> None:
    name = str(ctx.payload).strip()
    if name.lower() == "help":
        ctx.pass_()  # not ours: the greeter below may know
    elif not name.isalpha():
        ctx.reply("Just letters, please. What is your name?",
                  state={"tries": ctx.state["tries"] + 1})
    else:
        ctx.close(name.capitalize())
