"""The wire contract as an AsyncAPI 3.0 document: ``python -m router.asyncapi``.

Generated from the wire types of :mod:`worker_sdk.wire`: every field of every message class
must have an entry in :data:`FIELDS` (the generator refuses to run otherwise), enumerations come
from the wire module's constants plus what contract 1.1 adds. ``--check`` exits 1 when
docs/asyncapi.yaml is not what the generator writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from worker_sdk import wire

DOC = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.yaml"
AMQP_BINDING = "0.3.0"

NOTICE_ERROR_CODES = ["invalid_message", "busy", "unknown_service", "depth_exceeded",
                      "timeout", "invalid_reply", "exception"]
DEAD_REASONS = ["too_large", "undecodable", "invalid", "internal"]

ANY: dict[str, Any] = {"description": "any msgpack value"}
SESSION = {"type": "string", "minLength": 1, "maxLength": wire.MAX_SESSION_LEN,
           "description": "the session id, 1..256 Unicode code points"}
MAP = {"type": "object", "additionalProperties": True}
ERROR_REF = {"$ref": "#/components/schemas/Error"}

# (message class, wire field) -> (required, schema). Every dataclass field needs an entry.
FIELDS: dict[str, dict[str, tuple[bool, dict[str, Any]]]] = {
    "ClientMessage": {
        "type": (True, {"type": "string", "enum": sorted(wire.CLIENT_TYPES),
                        "description": "message, or end (ends the session at once)"}),
        "session": (True, SESSION),
        "id": (True, {"type": "string", "minLength": 1,
                      "description": "unique per client message of the session; the dedup key"}),
        "reply_to": (True, {"type": "string", "minLength": 1,
                            "description": "1..255 bytes of UTF-8: the queue that receives the "
                                           "notices of the chain this message starts"}),
        "payload": (False, ANY | {"description": "the person's input (text or structured)"}),
        "seq": (False, {"type": "integer", "minimum": 1,
                        "description": "this message's number in the session (ordering)"}),
        "entry": (False, {"type": "string", "description": "the service to open when the "
                                                          "session has no stack"}),
        "meta": (False, MAP | {"description": "passed through to services unchanged"}),
    },
    "Dispatch": {
        "session": (True, SESSION),
        "turn": (True, {"type": "string", "minLength": 16,
                        "description": "this turn's id; the reply echoes it"}),
        "event": (True, {"type": "string",
                         "enum": sorted(wire.EVENTS),
                         "description": "start, message, result, or idle (the frame's idle "
                                        "timer fired)"}),
        "depth": (True, {"type": "integer", "minimum": 0,
                         "description": "index of the frame in the stack, root = 0"}),
        "attempt": (True, {"type": "integer", "minimum": 1,
                           "description": "1, then +1 on each re-dispatch after a deadline"}),
        "state": (False, ANY | {"description": "this frame's saved state; nil on start"}),
        "args": (False, ANY | {"description": "start after open/replace: what the opener "
                                              "passed"}),
        "payload": (False, ANY | {"description": "message: the client's input; start of a new "
                                                 "session's first frame: that input; idle: the "
                                                 "seconds of silence"}),
        "bubbled": (False, {"type": "boolean", "description": "message and idle: a frame above "
                                                             "passed it down"}),
        "result": (False, {"$ref": "#/components/schemas/Result"}),
        "meta": (False, MAP | {"description": "from the client message that started the "
                                              "chain"}),
    },
    "Reply": {
        "session": (True, {"type": "string", "description": "echoed from the dispatch"}),
        "turn": (True, {"type": "string", "description": "echoed from the dispatch"}),
        "action": (True, {"type": "string", "enum": sorted(wire.ACTIONS)}),
        "state": (False, ANY | {"description": "reply, open: the frame's new state. Absent: "
                                               "the saved state is kept; nil: cleared"}),
        "output": (False, {"type": "array", "items": ANY,
                           "description": "messages for the client, in order"}),
        "service": (False, {"type": "string", "description": "open, replace (required there): "
                                                            "the service to start"}),
        "args": (False, ANY | {"description": "open, replace: its arguments"}),
        "result": (False, ANY | {"description": "close: the value returned to the parent"}),
        "error": (False, ERROR_REF | {"description": "fail (required there)"}),
        "idle": (False, {"type": ["number", "null"], "minimum": 0, "maximum": 2_592_000,
                         "description": "reply, open: fire this frame's idle timer after this "
                                        "many seconds of session silence; 0, nil or absent: "
                                        "no timer"}),
    },
    "Notice": {
        "session": (True, SESSION),
        "id": (True, {"type": "string", "minLength": 1,
                      "description": "unique across sessions and stable: frontends dedup by it"}),
        "in_reply_to": (True, {"type": "string",
                               "description": "the client message id whose chain produced it"}),
        "type": (True, {"type": "string", "enum": sorted(wire.NOTICE_TYPES)}),
        "payload": (False, ANY | {"description": "output: one output element; unhandled: the "
                                                 "client's input"}),
        "error": (False, ERROR_REF | {"description": "error: the code and message"}),
    },
}
CONDITIONS: dict[str, list[dict[str, Any]]] = {
    "Reply": [
        {"if": {"properties": {"action": {"enum": ["open", "replace"]}}},
         "then": {"required": ["service"]}},
        {"if": {"properties": {"action": {"const": "fail"}}}, "then": {"required": ["error"]}},
    ],
    "Notice": [
        {"if": {"properties": {"type": {"const": "error"}}}, "then": {"required": ["error"]}},
    ],
}
WIRE_CLASSES = {"ClientMessage": wire.ClientMessage, "Dispatch": wire.Dispatch,
                "Reply": wire.Reply, "Notice": wire.Notice}

SESSION_EX = "tg:42"
TURN = "q7Xk2mP9vR4sT8wYb3nC1d"
TRACE = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
EXAMPLE_HEADERS: dict[str, dict[str, str]] = {
    "DispatchHeaders": {wire.SENT_HEADER: "1764633600123"}}
"""Headers besides the trace context on a message's first example, by headers schema."""

EXAMPLES: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "ClientMessage": [
        ("hello", "A person's first message opens the root service", {
            "v": 1, "type": "message", "session": SESSION_EX, "id": "m-1",
            "reply_to": "cb.client.web", "payload": "hi", "seq": 1,
            "meta": {"user": "42", "locale": "en"}}),
        ("entry", "A new session opened on another service than the root", {
            "v": 1, "type": "message", "session": "tg:43", "id": "m-1",
            "reply_to": "cb.client.web", "payload": "hi", "entry": "ask_name"}),
        ("end", "The person leaves: stack and waiting messages are discarded", {
            "v": 1, "type": "end", "session": SESSION_EX, "id": "m-9",
            "reply_to": "cb.client.web"}),
    ],
    "Dispatch": [
        ("start", "The root frame of a new session starts with the person's input", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "event": "start", "depth": 0,
            "attempt": 1, "state": None, "payload": "hi", "meta": {"user": "42"}}),
        ("open", "A child frame starts with its opener's arguments", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "event": "start", "depth": 1,
            "attempt": 1, "state": None, "args": {"prompt": "What is your name?"}}),
        ("bubbled", "A message the frame above passed down, on a second attempt", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "event": "message", "depth": 0,
            "attempt": 2, "state": {"visits": 1}, "payload": "help", "bubbled": True}),
        ("result", "A child frame closed with a value", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "event": "result", "depth": 0,
            "attempt": 1, "state": {"visits": 1},
            "result": {"service": "ask_name", "ok": True, "value": "Ada"}}),
        ("refused", "An open refused by the router", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "event": "result", "depth": 0,
            "attempt": 1, "state": {"visits": 1},
            "result": {"service": "nosuch", "ok": False,
                       "error": {"code": "unknown_service",
                                 "message": "no queue 'cb.service.nosuch'"}}}),
    ],
    "Reply": [
        ("reply", "Say something and keep a new state", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "action": "reply",
            "state": {"visits": 2}, "output": ["Hello again!"]}),
        ("open", "Call a child service", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "action": "open",
            "state": {"visits": 1}, "service": "ask_name",
            "args": {"prompt": "What is your name?"}}),
        ("close", "Return a value to the parent frame", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "action": "close", "result": "Ada",
            "output": ["Thanks!"]}),
        ("replace", "Hand over to another service in place", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "action": "replace",
            "service": "ask_name", "args": {"prompt": "Name?"}}),
        ("pass", "Not mine: the frame below gets the message", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "action": "pass"}),
        ("fail", "End the frame with an error", {
            "v": 1, "session": SESSION_EX, "turn": TURN, "action": "fail",
            "error": {"code": "card_declined", "message": "the bank said no"}}),
    ],
    "Notice": [
        ("output", "One element of a reply's output", {
            "v": 1, "session": SESSION_EX, "id": "n-Yp3b8Qz1", "in_reply_to": "m-1",
            "type": "output", "payload": "Hello! What is your name?"}),
        ("end", "The stack emptied", {
            "v": 1, "session": SESSION_EX, "id": "n-Yp3b8Qz2", "in_reply_to": "m-9",
            "type": "end"}),
        ("busy", "Too many messages waiting: this one was not accepted", {
            "v": 1, "session": SESSION_EX, "id": "n-Yp3b8Qz3", "in_reply_to": "m-7",
            "type": "error", "error": {"code": "busy", "message": "1000 messages waiting"}}),
        ("unhandled", "No frame took the message", {
            "v": 1, "session": SESSION_EX, "id": "n-Yp3b8Qz4", "in_reply_to": "m-3",
            "type": "unhandled", "payload": "what?"}),
    ],
}


def _check_fields() -> None:
    for name, cls in WIRE_CLASSES.items():
        # ``trace`` travels in AMQP headers (traceparent, tracestate), not in the body.
        have = {f.name for f in dataclasses.fields(cls) if f.name != "trace"}
        documented = set(FIELDS[name])
        missing = have - documented
        if missing:
            raise SystemExit(f"router.asyncapi: wire.{name} has fields {sorted(missing)} that "
                             "FIELDS does not document: add them")
        stale = documented - have
        if stale:
            raise SystemExit(f"router.asyncapi: FIELDS documents {sorted(stale)} that "
                             f"wire.{name} does not have")


def payload_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one message body."""
    props: dict[str, Any] = {"v": {"const": wire.VERSION, "description": "contract version"}}
    required = ["v"]
    for field, (req, schema) in FIELDS[name].items():
        props[field] = schema
        if req:
            required.append(field)
    schema = {"type": "object", "required": required, "properties": props,
              "additionalProperties": True}
    if name in CONDITIONS:
        schema["allOf"] = CONDITIONS[name]
    return schema


def _message(name: str, title: str, summary: str, *, traced: bool = True,
             headers: str = "TraceHeaders") -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name, "title": title, "summary": summary,
        "contentType": wire.CONTENT_TYPE,
        "payload": {"$ref": f"#/components/schemas/{name}"},
        "bindings": {"amqp": {"messageType": name, "bindingVersion": AMQP_BINDING}},
    }
    if traced:
        message["headers"] = {"$ref": f"#/components/schemas/{headers}"}
    examples = [{"name": n, "summary": s, "payload": p} for n, s, p in EXAMPLES.get(name, [])]
    if examples and traced:
        examples[0]["headers"] = dict(TRACE) | EXAMPLE_HEADERS.get(headers, {})
    if examples:
        message["examples"] = examples
    return message


def _queue(address: str, description: str, messages: dict[str, str], *,
           shared: bool = True, **params: dict[str, Any]) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": address, "description": description,
        "messages": {k: {"$ref": f"#/components/messages/{v}"} for k, v in messages.items()},
    }
    if params:
        channel["parameters"] = params
    if shared:
        channel["bindings"] = {"amqp": {
            "is": "queue", "bindingVersion": AMQP_BINDING,
            "queue": {"name": address, "durable": True, "exclusive": False,
                      "autoDelete": False}}}
    return channel


def _exchange(address: str, description: str, messages: dict[str, str],
              **params: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": address, "description": description, "parameters": params,
        "messages": {k: {"$ref": f"#/components/messages/{v}"} for k, v in messages.items()},
        "bindings": {"amqp": {"is": "routingKey", "bindingVersion": AMQP_BINDING,
                              "exchange": {"name": address, "type": "direct",
                                           "durable": True, "autoDelete": False}}},
    }


def _op(action: str, channel: str, message: str, summary: str, *,
        mandatory: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "action": action, "summary": summary,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
    }
    if action == "send":
        op["bindings"] = {"amqp": {"deliveryMode": 2, "mandatory": mandatory,
                                   "bindingVersion": AMQP_BINDING}}
    return op


def document() -> dict[str, Any]:
    """The AsyncAPI document of the contract."""
    _check_fields()
    ns = {"description": "the deployment's namespace (CLOUDBUNCH_NAMESPACE)", "default": "cb"}
    service = {"description": "the service's name"}
    reply_to = {"description": "the queue a frontend named in a client message's reply_to"}
    partition = {"description": "proposed for 1.2, with routers run with --partitions N: "
                                "a session's partition, 0..N-1 (the first 8 bytes of "
                                "SHA-256 of its id, big-endian, modulo N; docs/scaling.md)"}
    schemas: dict[str, Any] = {name: payload_schema(name) for name in FIELDS}
    schemas["Error"] = {"type": "object", "required": ["code"], "properties": {
        "code": {"type": "string", "description": "router-raised codes: " + ", ".join(
            NOTICE_ERROR_CODES) + "; services choose their own"},
        "message": {"type": "string", "description": "absent = empty"}}}
    schemas["Result"] = {"type": "object", "required": ["service", "ok"], "properties": {
        "service": {"type": "string", "description": "the frame that ended (after replace, the "
                                                     "replacement) or the service a refused "
                                                     "open/replace named"},
        "ok": {"type": "boolean"},
        "value": ANY | {"description": "ok: the value the child closed with"},
        "error": ERROR_REF | {"description": "not ok: why"}}}
    schemas["TraceHeaders"] = {
        "type": "object", "description": "W3C trace context (AMQP headers): the router copies "
        "a client message's onto the dispatches and notices of its chain, a service's SDK "
        "copies a dispatch's onto its reply; a party that does not trace ignores them",
        "properties": {
            "traceparent": {"type": "string",
                            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
            "tracestate": {"type": "string"}}}
    schemas["DispatchHeaders"] = {
        "allOf": [{"$ref": "#/components/schemas/TraceHeaders"}, {
            "type": "object", "properties": {
                wire.SENT_HEADER: {
                    "type": "string", "pattern": "^[0-9]+$",
                    "description": "when the router published the dispatch, in milliseconds "
                    "since the epoch (the AMQP timestamp property holds whole seconds); the "
                    "Python SDK measures queue wait with it, a service may ignore it"}}}]}
    schemas["DeadLetterHeaders"] = {
        "type": "object", "required": ["x-cb-reason", "x-cb-detail", "x-cb-source-queue"],
        "properties": {
            "x-cb-reason": {"type": "string", "enum": DEAD_REASONS},
            "x-cb-detail": {"type": "string", "description": "one line naming the field or "
                                                            "problem"},
            "x-cb-source-queue": {"type": "string", "description": "the full queue name"}}}
    schemas["DeadLetter"] = {"description": "the bad body, unchanged (any bytes)"}
    messages = {
        "ClientMessage": _message("ClientMessage", "Client message",
                                  "A person's message (or end), from a frontend"),
        "Dispatch": _message("Dispatch", "Dispatch", "One turn for one frame, from the router",
                             headers="DispatchHeaders"),
        "Reply": _message("Reply", "Reply", "A service's answer to one dispatch"),
        "Notice": _message("Notice", "Notice", "What the router tells a frontend"),
        "DeadLetter": {
            "name": "DeadLetter", "title": "Dead letter",
            "summary": "A body that broke the contract (guarantee 8), for operators",
            "payload": {"$ref": "#/components/schemas/DeadLetter"},
            "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"}},
    }
    channels = {
        "ingressExchange": _exchange(
            "{namespace}.x.ingress", "Frontends publish client messages here (routing key "
            "'ingress'); bound to the ingress queue", {"clientMessage": "ClientMessage"},
            namespace=ns),
        "ingress": _queue("{namespace}.ingress", "Client messages; router replicas compete",
                          {"clientMessage": "ClientMessage"}, namespace=ns),
        "service": _queue("{namespace}.service.{service}", "Dispatches for one service; "
                          "declared by its workers, who compete", {"dispatch": "Dispatch"},
                          namespace=ns, service=service),
        "repliesExchange": _exchange(
            "{namespace}.x.replies", "Services publish replies here (routing key 'replies'); "
            "bound to the replies queue", {"reply": "Reply"}, namespace=ns),
        "replies": _queue("{namespace}.replies", "Replies; router replicas compete",
                          {"reply": "Reply"}, namespace=ns),
        "ingressPartition": _queue(
            "{namespace}.ingress.{partition}", "Proposed for 1.2 (routers with --partitions): "
            "the client messages of one partition's sessions, published on the ingress "
            "exchange with routing key 'ingress.{partition}'; a single active consumer, one "
            "router replica", {"clientMessage": "ClientMessage"}, namespace=ns,
            partition=partition),
        "repliesPartition": _queue(
            "{namespace}.replies.{partition}", "Proposed for 1.2 (routers with --partitions): "
            "replies to dispatches whose AMQP reply_to is 'replies.{partition}', published on "
            "the replies exchange with that routing key; a single active consumer",
            {"reply": "Reply"}, namespace=ns, partition=partition),
        "notices": _queue("{replyTo}", "A frontend's own queue: the notices of the chains its "
                          "messages started", {"notice": "Notice"}, shared=False,
                          replyTo=reply_to),
        "dead": _queue("{namespace}.dead", "Bad bodies, unchanged, with the reason headers",
                       {"deadLetter": "DeadLetter"}, namespace=ns),
    }
    operations = {
        "sendClientMessage": _op("send", "ingressExchange", "clientMessage",
                                 "A frontend sends a person's message"),
        "receiveClientMessage": _op("receive", "ingress", "clientMessage",
                                    "A router takes a client message"),
        "sendDispatch": _op("send", "service", "dispatch",
                            "The router dispatches a turn (a returned one means no such "
                            "service)"),
        "receiveDispatch": _op("receive", "service", "dispatch",
                               "A worker takes a dispatch; it answers every copy"),
        "sendReply": _op("send", "repliesExchange", "reply",
                         "A worker answers a dispatch, echoing session and turn"),
        "receiveReply": _op("receive", "replies", "reply",
                            "A router applies the first valid reply of the turn in flight"),
        "sendNotice": _op("send", "notices", "notice",
                          "The router tells the frontend (dropped if its queue is missing)"),
        "receiveNotice": _op("receive", "notices", "notice",
                             "A frontend receives notices, deduplicated by id"),
        "sendDeadLetter": _op("send", "dead", "deadLetter",
                              "The router sets a bad body aside"),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "CloudBunch wire contract", "version": "1.1.0",
            "description": "Frontends, the router and services over RabbitMQ (AMQP 0-9-1); "
                           "every body is one msgpack map with v: 1, persistent, published "
                           "with mandatory. docs/protocol.md is the full text (guarantees, "
                           "actions, failures). Generated by `python -m router.asyncapi` "
                           "from worker_sdk/wire.py.",
            "license": {"name": "MIT"}},
        "defaultContentType": wire.CONTENT_TYPE,
        "servers": {"rabbitmq": {"host": "127.0.0.1:5672", "protocol": "amqp",
                                 "protocolVersion": "0.9.1",
                                 "description": "any RabbitMQ 3.x; the namespace separates "
                                                "deployments"}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


# ---------------------------------------------------------------------------- YAML output

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .,/()'-]*$")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if (_PLAIN.match(text) and text.lower() not in _RESERVED and not text.endswith(" ")
            and ": " not in text and " #" not in text and len(text) < 80):
        return text
    return json.dumps(text, ensure_ascii=False)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of JSON-like data (what yamllint accepts, deterministic)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        for key, item in value.items():
            k = _scalar(key)
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{k}:\n" + to_yaml(item, indent + 2))
            elif _foldable(item, indent):
                wrapped = textwrap.wrap(item, 96 - indent, break_long_words=False,
                                        break_on_hyphens=False)
                lines.append(f"{pad}{k}: >-\n" + "".join(f"{pad}  {w}\n" for w in wrapped))
            else:
                lines.append(f"{pad}{k}: {_inline(item)}\n")
        return "".join(lines)
    if isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2:]}")
            else:
                lines.append(f"{pad}- {_inline(item)}\n")
        return "".join(lines)
    return pad + _scalar(value) + "\n"


def _foldable(value: Any, indent: int) -> bool:
    """A long one-line string that a folded block (>-) renders exactly."""
    return (isinstance(value, str) and len(value) + indent > 80 and "\n" not in value
            and "  " not in value and value == value.strip() and not value.startswith(("'", '"'))
            and all(len(w) < 90 - indent for w in value.split(" ")))


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def render() -> str:
    return ("# The CloudBunch wire contract as AsyncAPI 3.0. Generated: do not edit.\n"
            "# Regenerate with `python -m router.asyncapi` (docs/protocol.md is the full text).\n"
            + to_yaml(document()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.asyncapi",
                                     description="Write docs/asyncapi.yaml from the wire types.")
    parser.add_argument("--output", "-o", type=Path, default=DOC,
                        help="where to write it ('-' for stdout) [default docs/asyncapi.yaml]")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the file differs from what would be "
                             "written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m router.asyncapi",
                  file=sys.stderr)
            return 1
        return 0
    if str(args.output) == "-":
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
