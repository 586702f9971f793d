"""Router settings: one typed object, read from options and CLOUDBUNCH_* variables at the edge."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from worker_sdk.errors import ConfigError
from worker_sdk.settings import (
    DEFAULT_AMQP_URL,
    DEFAULT_NAMESPACE,
    QueueType,
    check_namespace,
    check_queue_type,
)

from .core import CoreConfig
from .store import DEFAULT_REDIS_URL

AMQP_SCHEMES = ("amqp", "amqps")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def check_url(url: str, schemes: tuple[str, ...], where: str) -> None:
    """Refuse a URL whose scheme no client here understands (it would hang or crash later)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in schemes:
        raise ConfigError(f"{where} must start with {' or '.join(s + '://' for s in schemes)}, "
                          f"not {url.split('@')[-1]!r}")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Every router setting (contract: "Router command line")."""

    root: str
    amqp_url: str = DEFAULT_AMQP_URL
    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = DEFAULT_NAMESPACE
    turn_timeout: float = 30.0
    max_attempts: int = 3
    max_depth: int = 32
    session_ttl: float = 86_400.0
    max_body: int = 262_144
    seq_hold: float = 2.0
    queue_type: QueueType = "quorum"
    max_waiting: int = 1_000
    history: int = 50
    """History entries kept per session (client messages and turns); 0: no history."""

    def __post_init__(self) -> None:
        check_url(self.amqp_url, AMQP_SCHEMES, "--amqp-url / CLOUDBUNCH_AMQP_URL")
        check_url(self.redis_url, REDIS_SCHEMES, "--redis-url / CLOUDBUNCH_REDIS_URL")
        if not self.root:
            raise ConfigError("no root service: pass --root NAME or set CLOUDBUNCH_ROOT")
        check_namespace(self.namespace)
        check_queue_type(self.queue_type)
        for name, low in (("turn_timeout", 0.0), ("session_ttl", 0.0), ("seq_hold", -1e-9)):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= low:
                raise ConfigError(f"--{name.replace('_', '-')} must be a number above "
                                  f"{max(low, 0):g}, not {value!r}")
        for name in ("max_attempts", "max_depth", "max_body", "max_waiting"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be 1 or more")
        if not 0 <= self.history <= 100_000:
            raise ConfigError("--history must be from 0 (off) to 100000 entries")

    def core(self) -> CoreConfig:
        """The part of the settings the pure core obeys."""
        return CoreConfig(
            root=self.root, namespace=self.namespace,
            turn_timeout_ms=max(1, round(self.turn_timeout * 1000)),
            max_attempts=self.max_attempts, max_depth=self.max_depth,
            session_ttl_ms=max(1, round(self.session_ttl * 1000)),
            seq_hold_ms=round(self.seq_hold * 1000), max_waiting=self.max_waiting)


ENV = {
    "amqp_url": "CLOUDBUNCH_AMQP_URL",
    "redis_url": "CLOUDBUNCH_REDIS_URL",
    "namespace": "CLOUDBUNCH_NAMESPACE",
    "root": "CLOUDBUNCH_ROOT",
    "turn_timeout": "CLOUDBUNCH_TURN_TIMEOUT",
    "max_attempts": "CLOUDBUNCH_MAX_ATTEMPTS",
    "max_depth": "CLOUDBUNCH_MAX_DEPTH",
    "session_ttl": "CLOUDBUNCH_SESSION_TTL",
    "max_body": "CLOUDBUNCH_MAX_BODY",
    "seq_hold": "CLOUDBUNCH_SEQ_HOLD",
    "queue_type": "CLOUDBUNCH_QUEUE_TYPE",
    "max_waiting": "CLOUDBUNCH_MAX_WAITING",
    "history": "CLOUDBUNCH_HISTORY",
}
"""The environment variable of each setting."""


def _convert(name: str, raw: Any, kind: type) -> Any:
    if kind is str or not isinstance(raw, str):
        return raw
    try:
        return kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{ENV[name]} / --{name.replace('_', '-')} must be {what}, "
                          f"not {raw!r}") from None


def load_config(options: Mapping[str, Any], env: Mapping[str, str] | None = None) -> RouterConfig:
    """Build the settings: option if given, else environment variable, else default."""
    env = os.environ if env is None else env
    kinds = {"turn_timeout": float, "session_ttl": float, "seq_hold": float,
             "max_attempts": int, "max_depth": int, "max_body": int, "max_waiting": int,
             "history": int}
    values: dict[str, Any] = {}
    for f in fields(RouterConfig):
        raw = options.get(f.name)
        if raw is None and ENV[f.name] in env:
            raw = env[ENV[f.name]]
        if raw is not None:
            values[f.name] = _convert(f.name, raw, kinds.get(f.name, str))
    values.setdefault("root", "")
    return RouterConfig(**values)
