"""Log formats for CloudBunch processes: ``text`` (key=value lines) or ``json``.

The project's log lines are ``event=NAME key=value ...`` messages; the JSON format turns each
into one object per line with those keys as fields (session, turn, service...), plus the time,
level, logger and, when OpenTelemetry is tracing, the trace and span ids.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from .errors import ConfigError

LogFormat = Literal["text", "json"]
FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_PAIR = re.compile(r"(?:^|\s)([a-z_][a-z0-9_]*)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)")
_MARK = "_cloudbunch_handler"
_RESERVED = {"time", "level", "logger", "message", "trace_id", "span_id", "exception"}


def check_format(value: str) -> LogFormat:
    if value not in FORMATS:
        raise ConfigError(f"log format must be 'text' or 'json', not {value!r} "
                          "(set --log-format or CLOUDBUNCH_LOG_FORMAT)")
    return value  # type: ignore[return-value]


def _trace_ids() -> tuple[str, str] | None:
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:  # not imported: nothing is tracing
        return None
    context = trace.get_current_span().get_span_context()  # type: ignore[attr-defined]
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, raw in _PAIR.findall(message):
            if key in _RESERVED or key in entry:
                continue
            if raw[:1] in "'\"" and raw[-1:] == raw[:1] and len(raw) >= 2:
                raw = raw[1:-1]
            entry[key] = raw
        ids = _trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: int, log_format: LogFormat = "text") -> None:
    """Install the process's logging (applications call this; libraries only log)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT))
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _MARK, False):  # ours, from an earlier call; others stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # redis-py's debug records are its own housekeeping (a probe for a feature this server
    # lacks on every connection, say), not what -v is for: what CloudBunch does.
    logging.getLogger("redis").setLevel(max(level, logging.INFO))
