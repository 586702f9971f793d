"""CloudBunch worker SDK: write services (:class:`Service`) and frontends (:class:`Client`).

The names below load on first use (PEP 562), so importing one light module of the package
(``worker_sdk.wire``, the broker port) never loads aio-pika, redis or tenacity.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .amqp import AmqpBroker
    from .client import Client
    from .errors import (
        ActionError,
        BrokerUnavailable,
        CloudBunchError,
        ConfigError,
        MessageRefused,
        NoRouter,
        PublishFailed,
    )
    from .memory import MemoryBroker
    from .service import KEEP, Context, Service
    from .settings import Settings
    from .wire import ClientMessage, Dispatch, ErrorInfo, Notice, Reply, Result

_HOME = {
    "KEEP": "service",
    "ActionError": "errors",
    "AmqpBroker": "amqp",
    "BrokerUnavailable": "errors",
    "Client": "client",
    "ClientMessage": "wire",
    "CloudBunchError": "errors",
    "ConfigError": "errors",
    "Context": "service",
    "Dispatch": "wire",
    "ErrorInfo": "wire",
    "MemoryBroker": "memory",
    "MessageRefused": "errors",
    "NoRouter": "errors",
    "Notice": "wire",
    "PublishFailed": "errors",
    "Reply": "wire",
    "Result": "wire",
    "Service": "service",
    "Settings": "settings",
}
"""Each public name and the module it lives in."""

__all__ = [
    "KEEP",
    "ActionError",
    "AmqpBroker",
    "BrokerUnavailable",
    "Client",
    "ClientMessage",
    "CloudBunchError",
    "ConfigError",
    "Context",
    "Dispatch",
    "ErrorInfo",
    "MemoryBroker",
    "MessageRefused",
    "NoRouter",
    "Notice",
    "PublishFailed",
    "Reply",
    "Result",
    "Service",
    "Settings",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
