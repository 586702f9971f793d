// The wire contract of docs/protocol.md, for a service: decode a dispatch, build and encode
// its reply. Pure: no I/O, so the unit tests exercise it without a broker.

import { Decoder, Encoder, ExtData, ExtensionCodec } from "@msgpack/msgpack";

export const VERSION = 1;
export const CONTENT_TYPE = "application/msgpack";
export const EVENTS = new Set(["start", "message", "result", "idle"]);
export const ACTIONS = new Set(["reply", "open", "close", "replace", "pass", "fail"]);
/** AMQP headers a service copies from a dispatch onto its reply (W3C trace context). */
export const TRACE_HEADERS = ["traceparent", "tracestate"];
/** The contract lets a party decode at least 512 levels (the body's map is level 1). */
export const MAX_DEPTH = 512;

// A timestamp (extension -1) is kept as its raw bytes: decoding it into a Date would drop
// nanoseconds, and a state must come back exactly as it was saved.
const extensions = new ExtensionCodec();
extensions.register({
  type: -1,
  encode: () => null,
  decode: (data) => new ExtData(-1, data),
});

const decoder = new Decoder({ extensionCodec: extensions, useBigInt64: true });
// ignoreUndefined: a field left undefined is absent, never nil. The difference matters:
// in a reply, an absent `state` keeps the saved state and a nil one clears it.
// useBigInt64: integers beyond 2**53 travel as BigInt instead of losing precision.
const encoder = new Encoder({
  extensionCodec: extensions,
  useBigInt64: true,
  ignoreUndefined: true,
  maxDepth: MAX_DEPTH,
});

/** A body this service cannot answer (no session or turn to echo), with the reason. */
export class BadDispatch extends Error {}

export function names(namespace) {
  return {
    service: (name) => `${namespace}.service.${name}`,
    replies: `${namespace}.replies`,
    repliesExchange: `${namespace}.x.replies`,
    repliesKey: "replies",
  };
}

/** The most partitions a namespace may have (`--partitions`). */
export const MAX_PARTITIONS = 256;

/**
 * The routing key a reply takes on `NS.x.replies`: the partition a dispatch names in its AMQP
 * `reply_to` property (`replies.3`, routers run with `--partitions`; docs/scaling.md), else
 * `replies`. Anything else in the property is ignored.
 */
export function replyKey(replyTo) {
  const found = /^replies\.([0-9]{1,3})$/.exec(replyTo ?? "");
  if (found && Number(found[1]) < MAX_PARTITIONS) return `replies.${Number(found[1])}`;
  return "replies";
}

function isMap(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) &&
    !(value instanceof Uint8Array) && !(value instanceof ExtData);
}

/**
 * Decode a dispatch body. Throws BadDispatch when it cannot be answered at all; a body that
 * can be answered but breaks the contract is returned with `problem` set, so that the
 * service replies `fail` instead of leaving the router to wait for its deadline.
 */
export function decodeDispatch(body) {
  let d;
  try {
    d = decoder.decode(body);
  } catch (err) {
    throw new BadDispatch(`undecodable: ${err.message}`);
  }
  if (!isMap(d)) throw new BadDispatch("not a map");
  if (typeof d.session !== "string" || typeof d.turn !== "string") {
    throw new BadDispatch("no session or turn string");
  }
  let problem;
  if (d.v !== VERSION) problem = `v is ${String(d.v)}, not ${VERSION}`;
  else if (!EVENTS.has(d.event)) problem = `unknown event ${JSON.stringify(d.event)}`;
  else if (d.event === "result" && (!isMap(d.result) || typeof d.result.ok !== "boolean")) {
    problem = "a result event without a result map";
  }
  return { ...d, problem };
}

/**
 * The reply body to `dispatch` for an action: `fields` are the reply's fields (`action`,
 * `output`, `state`, `service`, `args`, `result`, `error`, `idle`). Leave a field undefined
 * to omit it.
 */
export function replyBody(dispatch, fields) {
  if (!ACTIONS.has(fields.action)) throw new TypeError(`unknown action ${fields.action}`);
  const body = { v: VERSION, session: dispatch.session, turn: dispatch.turn, ...fields };
  if (Array.isArray(body.output) && body.output.length === 0) delete body.output;
  return body;
}

export function encode(value) {
  return encoder.encode(value);
}

export function decode(bytes) {
  return decoder.decode(bytes);
}

/** The trace context headers of a delivery, to copy onto its reply. */
export function traceHeaders(headers) {
  const out = {};
  for (const name of TRACE_HEADERS) {
    const value = headers?.[name];
    if (value !== undefined && value !== null) out[name] = value;
  }
  return out;
}
