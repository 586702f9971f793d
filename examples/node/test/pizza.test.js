import assert from "node:assert/strict";
import { test } from "node:test";
import { checkout, money, payment } from "../src/pizza.js";
import { Service } from "../src/turn.js";

const base = { v: 1, session: "s", turn: "T1", depth: 3, attempt: 1 };

test("money formats cents as the Python twin does", () => {
  assert.equal(money(1290), "$12.90");
  assert.equal(money(7), "$0.07");
  assert.equal(money(1000), "$10.00");
});

test("payment asks for the card with the total it was opened with", () => {
  assert.deepEqual(payment.handle({ ...base, event: "start", state: null, args: { total: 1290 } }), {
    action: "reply",
    state: { total: 1290, asked: "Please type your card number to pay $12.90." },
    idle: 60,
    output: ["Please type your card number to pay $12.90."],
  });
});

test("payment declines a card ending in 0000 and passes what is no card", () => {
  const message = { ...base, event: "message", state: { total: 1290 } };
  assert.deepEqual(payment.handle({ ...message, payload: "4000 1234 5678 0000" }), {
    action: "fail",
    error: { code: "card_declined", message: "the bank refused the card ending in 0000." },
    output: undefined,
  });
  assert.equal(payment.handle({ ...message, payload: "help" }).action, "pass");
  assert.equal(payment.handle({ ...message, payload: "1234" }).action, "pass");
  assert.equal(payment.handle({ ...message, payload: null }).action, "pass");
});

test("payment charges once per turn: the turn is the payment id", () => {
  const got = payment.handle({ ...base, event: "message", state: { total: 870 }, payload: "4242-4242-4242-4242" });
  assert.deepEqual(got.result, { payment_id: "pay-T1", card: "4242", total: 870 });
  assert.deepEqual(got.output, ["Paid $8.70 with the card ending in 4242."]);
});

test("checkout offers a retry after a declined card, and opens payment on 'retry'", () => {
  const state = { description: "large margherita", total: 1290, street: "12 Baker Street", step: "payment" };
  const declined = checkout.handle({
    ...base,
    event: "result",
    state,
    result: { service: "payment", ok: false, error: { code: "card_declined", message: "no." } },
  });
  assert.equal(declined.action, "reply");
  assert.deepEqual(declined.output, [
    "Your card was declined: no.",
    { text: "Say 'retry' to pay with another card, or 'cancel'.", buttons: ["retry", "cancel"] },
  ]);
  const question = { text: "Say 'retry' to pay with another card, or 'cancel'.", buttons: ["retry", "cancel"] };
  assert.deepEqual(declined.state, { ...state, step: "retry", asked: question });
  assert.equal(declined.idle, 60);
  // After a minute of silence the question comes again, with its buttons, once.
  const reminded = checkout.handle({ ...base, event: "idle", state: declined.state, payload: 60 });
  assert.deepEqual(reminded.output, [{ ...question, text: `Are you still there? ${question.text}` }]);
  assert.equal(reminded.idle, undefined);
  const again = payment.handle({ ...base, event: "idle", state: { total: 5, asked: "Card?" }, payload: 60 });
  assert.deepEqual(again.output, ["Are you still there? Card?"]);
  const retry = checkout.handle({ ...base, event: "message", state: declined.state, payload: " Retry " });
  assert.deepEqual([retry.action, retry.service, retry.args], ["open", "payment", { total: 1290 }]);
  assert.equal(checkout.handle({ ...base, event: "message", state, payload: "retry" }).action, "pass");
});

test("checkout propagates any other failure of a child", () => {
  const got = checkout.handle({
    ...base,
    event: "result",
    state: {},
    result: { service: "address", ok: false, error: { code: "timeout", message: "" } },
  });
  assert.deepEqual(got.error, { code: "timeout", message: "" });
});

test("defaults: no message handler passes, an idle keeps the state", () => {
  const bare = new Service("bare");
  assert.equal(bare.handle({ ...base, event: "message" }).action, "pass");
  assert.deepEqual(bare.handle({ ...base, event: "idle", payload: 60 }), { action: "reply", output: undefined });
});

test("a handler that picks two actions is an error", () => {
  const twice = new Service("twice", {
    start(_d, turn) {
      turn.pass();
      turn.close(1);
    },
  });
  assert.throws(() => twice.handle({ ...base, event: "start" }), /one action/);
});
