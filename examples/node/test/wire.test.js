import assert from "node:assert/strict";
import { test } from "node:test";
import { BadDispatch, decode, decodeDispatch, encode, replyBody, replyKey, traceHeaders } from "../src/wire.js";

const dispatch = { v: 1, session: "s", turn: "t".repeat(22), event: "start", depth: 0, attempt: 1, state: null };

test("an absent field stays absent and a nil one stays nil", () => {
  // In a reply, absent state keeps the saved state and nil clears it: the two must differ.
  const keep = decode(encode(replyBody(dispatch, { action: "reply", state: undefined })));
  assert.deepEqual(keep, { v: 1, session: "s", turn: dispatch.turn, action: "reply" });
  const clear = decode(encode(replyBody(dispatch, { action: "reply", state: null })));
  assert.equal(clear.state, null);
  assert.ok(Object.hasOwn(clear, "state"));
});

test("an empty output is left out", () => {
  assert.ok(!Object.hasOwn(replyBody(dispatch, { action: "pass", output: [] }), "output"));
});

test("an unknown action is refused before it reaches the wire", () => {
  assert.throws(() => replyBody(dispatch, { action: "stay" }), TypeError);
});

test("a body without session or turn cannot be answered", () => {
  assert.throws(() => decodeDispatch(encode({ v: 1, turn: "x" })), BadDispatch);
  assert.throws(() => decodeDispatch(encode([1, 2])), BadDispatch);
  assert.throws(() => decodeDispatch(Uint8Array.of(0xc1)), BadDispatch);
});

test("a body that can be answered but breaks the contract names its problem", () => {
  assert.match(decodeDispatch(encode({ ...dispatch, v: 2 })).problem, /v is 2/);
  assert.match(decodeDispatch(encode({ ...dispatch, event: "tick" })).problem, /unknown event/);
  assert.match(decodeDispatch(encode({ ...dispatch, event: "result" })).problem, /result map/);
  assert.equal(decodeDispatch(encode(dispatch)).problem, undefined);
});

test("integers beyond 2**53, binary and timestamps come back exactly", () => {
  // A timestamp 96 with nanoseconds: a Date would drop them.
  const ts = Uint8Array.from([0xc7, 12, 0xff, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1]);
  const body = Uint8Array.from([0x83, 0xa1, 0x62, 0xcf, 0x40, 0, 0, 0, 0, 0, 0, 1, 0xa1, 0x74, ...ts, 0xa1, 0x6e, 0xc4, 1, 9]);
  assert.deepEqual(encode(decode(body)), body);
});

test("state nested 512 levels deep is encoded", () => {
  let state = "leaf";
  for (let i = 0; i < 509; i++) state = [state];
  const body = replyBody(dispatch, { action: "reply", state: { deep: state } });
  assert.deepEqual(decode(encode(body)).state, { deep: state });
});

test("only the trace context headers are copied", () => {
  assert.deepEqual(traceHeaders({ traceparent: "00-a-b-01", tracestate: "x=1", other: "y" }), {
    traceparent: "00-a-b-01",
    tracestate: "x=1",
  });
  assert.deepEqual(traceHeaders(undefined), {});
});

test("a reply takes the partition its dispatch names, and nothing else", () => {
  // The same table as tests/unit/test_partitions.py, so both SDKs agree.
  const cases = [
    [undefined, "replies"], ["", "replies"], ["replies", "replies"], ["replies.3", "replies.3"],
    ["replies.003", "replies.3"], ["replies.255", "replies.255"], ["replies.256", "replies"],
    ["replies.1000", "replies"], ["replies.", "replies"], ["replies.²", "replies"],
    ["replies.-1", "replies"], ["ingress.3", "replies"], ["cb.client.abc", "replies"],
  ];
  for (const [replyTo, key] of cases) assert.equal(replyKey(replyTo), key, String(replyTo));
});
