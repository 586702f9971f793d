"""CloudBunch worker SDK: write services (:class:`Service`) and frontends (:class:`Client`)."""

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
    StoreUnavailable,
)
from .memory import MemoryBroker
from .service import KEEP, Context, Service
from .settings import Settings
from .wire import ClientMessage, Dispatch, ErrorInfo, Notice, Reply, Result

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
    "StoreUnavailable",
]
