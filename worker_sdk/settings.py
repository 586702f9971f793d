"""Connection settings shared by services and frontends, read from CLOUDBUNCH_* at the edge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_NAMESPACE = "cb"

QueueType = Literal["quorum", "classic"]


def check_queue_type(value: str) -> QueueType:
    """Validate a queue type setting."""
    if value not in ("quorum", "classic"):
        raise ConfigError(f"queue type must be 'quorum' or 'classic', not {value!r} "
                          "(set --queue-type or CLOUDBUNCH_QUEUE_TYPE)")
    return value  # type: ignore[return-value]


def check_namespace(value: str) -> str:
    """Validate a namespace: non-empty, no spaces, no braces."""
    if not value or any(c.isspace() or c in "{}" for c in value):
        raise ConfigError(f"namespace must be a non-empty word without spaces or braces, "
                          f"not {value!r} (set --namespace or CLOUDBUNCH_NAMESPACE)")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the broker is and how its queues are named and declared."""

    amqp_url: str = DEFAULT_AMQP_URL
    namespace: str = DEFAULT_NAMESPACE
    queue_type: QueueType = "quorum"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read CLOUDBUNCH_AMQP_URL, CLOUDBUNCH_NAMESPACE and CLOUDBUNCH_QUEUE_TYPE."""
        env = os.environ if env is None else env
        url = env.get("CLOUDBUNCH_AMQP_URL", DEFAULT_AMQP_URL)
        if not url.lower().startswith(("amqp://", "amqps://")):
            raise ConfigError("CLOUDBUNCH_AMQP_URL must start with amqp:// or amqps://, "
                              f"not {url.split('@')[-1]!r}")
        return cls(
            amqp_url=env.get("CLOUDBUNCH_AMQP_URL", DEFAULT_AMQP_URL),
            namespace=check_namespace(env.get("CLOUDBUNCH_NAMESPACE", DEFAULT_NAMESPACE)),
            queue_type=check_queue_type(env.get("CLOUDBUNCH_QUEUE_TYPE", "quorum")),
        )
