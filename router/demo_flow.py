"""A pizza-ordering bot: six small stateless services that together use every action.

The tree (depth in brackets; ``->`` is ``open``, ``=>`` is ``replace``)::

    pizza [0]  greets, answers "help" from any depth, cancels, says goodbye
      -> menu [1]  pizza and size
        -> order [2]  a drink  => checkout [2]  (the replacement keeps menu as its parent)
          -> address [3]  street
          -> payment [3]  card number; "...0000" is declined with `fail`

Where each action happens:

- ``reply``: every question; the root's answer to a bubbled "help" (a digression: the form
  above it stays open and the next message goes back to it).
- ``open``: root -> menu, menu -> order, checkout -> address and payment.
- ``close``: address, payment, checkout and menu return their values; the root closes on "bye".
- ``replace``: order hands over to checkout; the root handles a bubbled "cancel" by replacing
  itself with a fresh root, which discards the order's frames above it.
- ``pass``: every service above the root passes what it does not understand ("help",
  "cancel", anything else) down to its parent.
- ``fail``: payment declines a card ending in 0000; checkout catches the failed result and
  offers to retry. Every ``on_result`` handler checks ``ctx.result.ok`` first (a handler
  receives the child's failure too) and hands on what it cannot handle with
  ``ctx.propagate()``; the root tells the person the order failed.
- idle timers: every question waits for its answer with ``idle=``; after a minute of silence
  the form reminds the person once. The root, while an order is open, holds a longer timer:
  after 15 minutes of silence it drops the order (its ``idle`` turn discards the forms above
  it). ``cloudbunch demo --remind-after S --give-up-after S`` shortens both (:data:`IDLE`).

Questions with a few possible answers offer them as quick replies (``quick_replies``: buttons
in the web chat, ``[titles]`` after the text in the terminal); typing the answer works too.

Every service keeps what it knows in ``ctx.state`` (and what it is given in ``ctx.args``),
never in process memory, so any worker replica can serve any turn.

It ships with the package so that ``cloudbunch demo`` works from a plain install. Run the
workers with ``cloudbunch worker router.demo_flow:pizza router.demo_flow:menu ...`` (see
``deploy/``); ``SERVICES`` and ``ROOT`` let tools load the whole flow at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from worker_sdk import Context, Service
from worker_sdk.quick_replies import quick_replies

__all__ = ["IDLE", "ROOT", "SERVICES", "IdleTimes", "address", "checkout", "menu", "order",
           "payment", "pizza"]

PIZZAS: dict[str, int] = {"margherita": 800, "pepperoni": 950, "veggie": 900}
"""Price of a medium pizza, in cents."""
SIZES: dict[str, float] = {"small": 0.8, "medium": 1.0, "large": 1.3}
DRINKS: dict[str, int] = {"cola": 250, "water": 150, "no": 0}



@dataclass(slots=True)
class IdleTimes:
    """How long the bot waits on a silent person, in seconds."""

    remind_after: float = 60.0
    """A form repeats its question once after this much silence."""
    give_up_after: float = 900.0
    """The root drops the order in progress after this much silence."""


IDLE = IdleTimes()
"""Read at every turn; the demo's ``--remind-after`` / ``--give-up-after`` change it."""

HELP = ("I take pizza orders. Say 'order' to start one, answer each question, "
        "'cancel' to drop the order in progress and 'bye' to leave.")

pizza = Service("pizza")
menu = Service("menu")
order = Service("order")
checkout = Service("checkout")
address = Service("address")
payment = Service("payment")


def _text(ctx: Context) -> str:
    """The person's input, normalised: payloads are plain text in this example."""
    return str(ctx.payload or "").strip().lower()


def _money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


def _ask(ctx: Context, *lines: Any, state: dict[str, Any]) -> None:
    """Ask a question (the last line: text, or text with quick replies) and wait for the
    answer, reminding once after a silence (``on_idle`` of each form, :func:`_remind`)."""
    ctx.reply(*lines, state={**state, "asked": lines[-1]}, idle=IDLE.remind_after)


def _remind(ctx: Context) -> None:
    """A form's idle timer fired: repeat the question, once (no new timer)."""
    asked = (ctx.state or {}).get("asked", "")
    if isinstance(asked, dict):  # a question with quick replies keeps its buttons
        ctx.reply({**asked, "text": f"Are you still there? {asked.get('text', '')}"})
    else:
        ctx.reply(f"Are you still there? {asked}".strip())


def _pick(text: str, choices: dict[str, Any]) -> str | None:
    """The choice named in ``text`` (a word of it), if exactly one is."""
    found = [name for name in choices if re.search(rf"\b{name}\b", text)]
    return found[0] if len(found) == 1 else None


# ---------------------------------------------------------------------------- pizza (root)


WELCOME = quick_replies("Welcome to Bunch Pizza! Say 'order' to order a pizza, or 'help'.",
                        "order", "help")


@pizza.on_start
def pizza_start(ctx: Context) -> None:
    # args is set when a cancel replaced the root: keep the count of orders placed so far.
    placed = int((ctx.args or {}).get("placed", 0))
    if ctx.args and ctx.args.get("cancelled"):
        ctx.reply(quick_replies("Say 'order' whenever you want another pizza.", "order"),
                  state={"placed": placed})
        return
    # The person's first message starts the session and arrives here, in ctx.payload: greet,
    # then answer it, so that a first "help" or "order" is not swallowed by the welcome.
    ctx.say(WELCOME)
    if not _root_command(ctx, _text(ctx), placed):
        ctx.reply(state={"placed": placed})


@pizza.on_message
def pizza_message(ctx: Context) -> None:
    placed = int((ctx.state or {}).get("placed", 0))
    if _root_command(ctx, _text(ctx), placed):
        return
    if ctx.bubbled:
        ctx.reply(f"Sorry, I did not understand {ctx.payload!r}. "
                  "Answer the last question, or say 'help' or 'cancel'.",
                  idle=IDLE.give_up_after)
    else:
        ctx.reply("Say 'order' to order a pizza, or 'help'.")


def _root_command(ctx: Context, text: str, placed: int) -> bool:
    """Answer one of the root's commands; False if ``text`` is none of them."""
    state = {"placed": placed}
    if text == "help":
        if ctx.bubbled:
            # A digression: replying leaves the frames above in place; the form goes on. This
            # turn ended the root's timer: set it again, the order is still open.
            ctx.reply(HELP, "Now, back to your order: please answer the last question.",
                      idle=IDLE.give_up_after)
        else:
            ctx.reply(HELP, state=state)
    elif text == "cancel" and ctx.bubbled:
        # Any action but reply on a bubbled message discards the frames above first, so
        # replacing the root with a fresh one drops the whole order in progress.
        ctx.say("Okay, I cancelled that order.")
        ctx.replace("pizza", {"placed": placed, "cancelled": True})
    elif text == "cancel":
        ctx.reply("There is no order to cancel. Say 'order' to start one.", state=state)
    elif text in ("order", "menu", "start"):
        # While the order is open, a long silence drops it (pizza_idle below).
        ctx.open("menu", state=state, idle=IDLE.give_up_after)
    elif text in ("bye", "quit", "exit"):
        ctx.say(f"Goodbye! You placed {placed} order(s) today.")
        ctx.close({"placed": placed})
    else:
        return False
    return True


@pizza.on_idle
def pizza_idle(ctx: Context) -> None:
    # The forms above the root were discarded when this turn began: the order is gone.
    ctx.reply(f"You have been away for {ctx.payload:g} seconds, so I dropped the order in "
              "progress. Say 'order' to start again.")


@pizza.on_result("menu")
def pizza_menu_done(ctx: Context) -> None:
    # on_result receives the child's failure as well as its value: check ``ok`` first.
    placed = int((ctx.state or {}).get("placed", 0))
    result = ctx.result
    if result is not None and result.ok:
        summary = result.value or {}
        ctx.reply(f"Thank you! Order #{placed + 1} confirmed: {summary.get('description')}, "
                  f"paid {_money(int(summary.get('total', 0)))}, going to "
                  f"{summary.get('street')}. It will be there in 30 minutes.",
                  quick_replies("Say 'order' for another pizza or 'bye' to leave.",
                                "order", "bye"),
                  state={"placed": placed + 1})
    else:
        code = result.error.code if result is not None and result.error else "error"
        ctx.reply(f"Sorry, the order could not be completed ({code}). "
                  "Say 'order' to try again.")


# ---------------------------------------------------------------------------- menu


@menu.on_start
def menu_start(ctx: Context) -> None:
    names = ", ".join(f"{name} ({_money(price)})" for name, price in PIZZAS.items())
    _ask(ctx, quick_replies(f"Which pizza would you like? We have {names}.", *PIZZAS),
         state={"step": "pizza"})


@menu.on_message
def menu_message(ctx: Context) -> None:
    text = _text(ctx)
    state = dict(ctx.state or {})
    if state.get("step") == "pizza":
        choice = _pick(text, PIZZAS)
        if choice is None:
            ctx.pass_()  # "help", "cancel", or something for the root to explain
            return
        state.update(step="size", pizza=choice)
        _ask(ctx, quick_replies(f"A {choice}. Which size: small, medium or large?", *SIZES),
             state=state)
        return
    size = _pick(text, SIZES)
    if size is None:
        ctx.pass_()
        return
    price = round(PIZZAS[state["pizza"]] * SIZES[size])
    state.update(step="ordering", size=size, price=price)
    ctx.open("order", {"pizza": state["pizza"], "size": size, "price": price}, state=state)


@menu.on_result("checkout")
def menu_checkout_done(ctx: Context) -> None:
    result = ctx.result
    if result is None or not result.ok:
        ctx.propagate()  # let the failure travel on to the root, as an exception would
        return
    ctx.close(result.value)


# ---------------------------------------------------------------------------- order


@order.on_start
def order_start(ctx: Context) -> None:
    item = dict(ctx.args or {})
    _ask(ctx, quick_replies(f"A {item['size']} {item['pizza']}, {_money(item['price'])}. "
                            "Anything to drink: cola, water or no?", *DRINKS), state=item)


@order.on_message
def order_message(ctx: Context) -> None:
    item = dict(ctx.state or {})
    drink = _pick(_text(ctx), DRINKS)
    if drink is None:
        ctx.pass_()
        return
    description = f"{item['size']} {item['pizza']}"
    if drink != "no":
        description += f" with {drink}"
    # The order is complete: checkout takes this frame's place and reports to menu directly.
    ctx.replace("checkout", {"description": description,
                             "total": item["price"] + DRINKS[drink]})


# ---------------------------------------------------------------------------- checkout


@checkout.on_start
def checkout_start(ctx: Context) -> None:
    basket = dict(ctx.args or {})
    ctx.say(f"Checkout: {basket['description']}, {_money(basket['total'])} in all.")
    ctx.open("address", state={**basket, "step": "address"})


@checkout.on_message
def checkout_message(ctx: Context) -> None:
    state = dict(ctx.state or {})
    if state.get("step") == "retry" and _text(ctx) in ("retry", "yes", "again"):
        ctx.open("payment", {"total": state["total"]}, state={**state, "step": "payment"})
    else:
        ctx.pass_()


@checkout.on_result("address")
def checkout_address_done(ctx: Context) -> None:
    result = ctx.result
    if result is None or not result.ok:
        ctx.propagate()
        return
    state = {**(ctx.state or {}), "street": result.value, "step": "payment"}
    ctx.open("payment", {"total": state["total"]}, state=state)


@checkout.on_result("payment")
def checkout_payment_done(ctx: Context) -> None:
    state = dict(ctx.state or {})
    result = ctx.result
    if result is not None and result.ok:
        paid = dict(result.value or {})
        ctx.close({"description": state["description"], "total": state["total"],
                   "street": state["street"], "payment_id": paid.get("payment_id")})
        return
    error = result.error if result is not None else None
    if error is not None and error.code == "card_declined":
        _ask(ctx, f"Your card was declined: {error.message}",
             quick_replies("Say 'retry' to pay with another card, or 'cancel'.",
                           "retry", "cancel"),
             state={**state, "step": "retry"})
        return
    ctx.propagate()  # any other failure is not ours to handle


# ---------------------------------------------------------------------------- address


@address.on_start
def address_start(ctx: Context) -> None:
    _ask(ctx, "Where should we deliver? Street and number, please.", state={})


@address.on_message
def address_message(ctx: Context) -> None:
    street = str(ctx.payload or "").strip()
    # A street has a number and a name; anything else is not for this form.
    if re.search(r"\d", street) and re.search(r"[a-zA-Z]{2,}", street):
        ctx.close(street)
    else:
        ctx.pass_()


# ---------------------------------------------------------------------------- payment


@payment.on_start
def payment_start(ctx: Context) -> None:
    total = int((ctx.args or {}).get("total", 0))
    _ask(ctx, f"Please type your card number to pay {_money(total)}.", state={"total": total})


@payment.on_message
def payment_message(ctx: Context) -> None:
    digits = re.sub(r"[\s-]", "", str(ctx.payload or ""))
    if not (digits.isdigit() and 12 <= len(digits) <= 19):
        ctx.pass_()
        return
    if digits.endswith("0000"):
        ctx.fail("card_declined", "the bank refused the card ending in 0000.")
        return
    total = int((ctx.state or {}).get("total", 0))
    # The turn id is the idempotency key: a re-dispatched turn must not charge twice.
    ctx.say(f"Paid {_money(total)} with the card ending in {digits[-4:]}.")
    ctx.close({"payment_id": f"pay-{ctx.turn}", "card": digits[-4:], "total": total})


for _form in (menu, order, checkout, address, payment):
    _form.on_idle(_remind)

SERVICES: list[Service] = [pizza, menu, order, checkout, address, payment]
ROOT = "pizza"
