// Two services of the pizza flow (router/demo_flow.py), in Node.js: `checkout` (the basket, then
// the address and payment forms, a declined card, a retry) and `payment` (a card number;
// "...0000" is declined with `fail`). They behave like their Python twins, turn for turn:
// the end-to-end test holds both to one transcript.

import { Service } from "./turn.js";

/** Python's truthiness for the values a msgpack body can carry. */
function truthy(value) {
  if (value === null || value === undefined || value === false || value === 0 || value === "") {
    return false;
  }
  if (typeof value === "bigint") return value !== 0n;
  if (Array.isArray(value) || value instanceof Uint8Array) return value.length > 0;
  if (typeof value === "object") return Object.keys(value).length > 0;
  return true;
}

/** The person's input as text (payloads are plain text in this flow). */
function rawText(payload) {
  if (!truthy(payload)) return "";
  return typeof payload === "string" ? payload : String(payload);
}

function text(dispatch) {
  return rawText(dispatch.payload).trim().toLowerCase();
}

/** An integer field, as Python's int() would read it; anything else is an error. */
function int(value) {
  if (typeof value === "number" && Number.isFinite(value)) return Math.trunc(value);
  if (typeof value === "bigint") return Number(value);
  if (typeof value === "string" && /^\s*[+-]?\d+\s*$/.test(value)) return Number.parseInt(value, 10);
  throw new TypeError(`not an integer: ${JSON.stringify(value)}`);
}

/**
 * An output element with quick-reply buttons (the payload convention of docs/protocol.md):
 * frontends with buttons show them, the others show `text [a] [b]`.
 */
export function quickReplies(text, ...buttons) {
  return { text, buttons };
}

export function money(cents) {
  const whole = Math.floor(cents / 100);
  const rest = ((cents % 100) + 100) % 100;
  return `$${whole}.${String(rest).padStart(2, "0")}`;
}

function map(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? value : {};
}

/** Python's dict.get: the default only when the key is absent (a nil value stays nil). */
function get(obj, key, fallback) {
  return Object.hasOwn(obj, key) ? obj[key] : fallback;
}

/** Seconds of silence after which a form repeats its question, once (router/demo_flow.py). */
export const REMIND_AFTER = 60;

/** Ask a question (the last line) and wait for the answer, reminding once after a silence. */
function ask(turn, lines, state) {
  turn.reply(lines, { state: { ...state, asked: lines.at(-1) }, idle: REMIND_AFTER });
}

/** A form's idle timer fired: repeat the question, once (no new timer). */
function remind(d, turn) {
  const asked = get(map(d.state), "asked", "");
  if (asked !== null && typeof asked === "object" && !Array.isArray(asked)) {
    turn.reply([{ ...asked, text: `Are you still there? ${asked.text ?? ""}` }]);
  } else {
    turn.reply([`Are you still there? ${rawText(asked)}`.trim()]);
  }
}

/** Propagate a child's failure, as an exception travels up a call stack. */
function failWith(turn, error) {
  turn.fail(error ? String(error.code) : "error", error ? String(error.message ?? "") : "");
}

export const checkout = new Service("checkout", {
  idle: remind,

  start(d, turn) {
    const basket = map(d.args);
    turn.say(`Checkout: ${basket.description}, ${money(int(basket.total))} in all.`);
    turn.open("address", undefined, { state: { ...basket, step: "address" } });
  },

  message(d, turn) {
    const state = map(d.state);
    if (state.step === "retry" && ["retry", "yes", "again"].includes(text(d))) {
      turn.open("payment", { total: state.total }, { state: { ...state, step: "payment" } });
    } else {
      turn.pass();
    }
  },

  results: {
    address(d, turn) {
      const result = d.result;
      if (!result.ok) {
        failWith(turn, result.error);
        return;
      }
      const state = { ...map(d.state), street: result.value, step: "payment" };
      turn.open("payment", { total: state.total }, { state });
    },

    payment(d, turn) {
      const state = map(d.state);
      const result = d.result;
      if (result.ok) {
        const paid = map(result.value);
        turn.close({
          description: state.description,
          total: state.total,
          street: state.street,
          payment_id: get(paid, "payment_id", null),
        });
        return;
      }
      const error = result.error;
      if (error && error.code === "card_declined") {
        ask(
          turn,
          [
            `Your card was declined: ${error.message ?? ""}`,
            quickReplies("Say 'retry' to pay with another card, or 'cancel'.", "retry", "cancel"),
          ],
          { ...state, step: "retry" },
        );
        return;
      }
      failWith(turn, error);
    },
  },
});

export const payment = new Service("payment", {
  idle: remind,

  start(d, turn) {
    const total = int(get(map(d.args), "total", 0));
    ask(turn, [`Please type your card number to pay ${money(total)}.`], { total });
  },

  message(d, turn) {
    const digits = rawText(d.payload).replace(/[\s-]/gu, "");
    if (!(/^\p{Nd}+$/u.test(digits) && digits.length >= 12 && digits.length <= 19)) {
      turn.pass();
      return;
    }
    if (digits.endsWith("0000")) {
      turn.fail("card_declined", "the bank refused the card ending in 0000.");
      return;
    }
    const total = int(get(map(d.state), "total", 0));
    // The turn id is the idempotency key: a re-dispatched turn must not charge twice.
    turn.say(`Paid ${money(total)} with the card ending in ${digits.slice(-4)}.`);
    turn.close({ payment_id: `pay-${d.turn}`, card: digits.slice(-4), total });
  },
});

export const SERVICES = { checkout, payment };
