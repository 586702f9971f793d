"""Router settings: one declaration per setting (see :mod:`worker_sdk.settings`).

Each field below is the only place its setting is declared: name, type, default, variable,
help and bounds. ``router.cli`` derives the options and ``--help`` from it,
:meth:`RouterConfig.from_env` the environment loading, and the README's table is checked
against :func:`worker_sdk.settings.markdown_table` (``python -m router.config`` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass

from worker_sdk.settings import (
    Settings,
    WorkerSettings,
    check_url_scheme,
    markdown_table,
    setting,
)

from .core import CoreConfig
from .store import DEFAULT_REDIS_URL

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings(Settings):
    """Where RabbitMQ and Redis are: what the tools (``session show``, ``purge``) need."""

    redis_url: str = setting(
        DEFAULT_REDIS_URL, "Redis URL (redis://, rediss://, or redis+cluster://HOST:PORT,... "
        "for a Redis Cluster)", metavar="URL", check=check_url_scheme(REDIS_SCHEMES))


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterConfig(ServerSettings):
    """Every router setting (contract: "Router command line")."""

    root: str = setting("", "service opened as the root of a new session", metavar="SERVICE",
                        required=True)
    turn_timeout: float = setting(30.0, "seconds to wait for a reply before re-dispatching",
                                  metavar="SECONDS", minimum=0, above=True)
    max_attempts: int = setting(3, "dispatches of one turn before it fails with 'timeout'",
                                metavar="N", minimum=1)
    max_depth: int = setting(32, "most frames on a session's stack", metavar="N", minimum=1)
    session_ttl: float = setting(86_400.0, "seconds after which an idle session is forgotten",
                                 metavar="SECONDS", minimum=0, above=True)
    max_body: int = setting(262_144, "largest message body accepted, in bytes", metavar="BYTES",
                            minimum=1)
    seq_hold: float = setting(2.0, "seconds a message waits for the ones numbered before it",
                              metavar="SECONDS", minimum=0)
    max_waiting: int = setting(1_000, "client messages a session may have waiting; more are "
                               "refused", metavar="N", minimum=1)
    history: int = setting(50, "history entries kept per session for `session history` and "
                           "replay (0: off)", metavar="N", minimum=0, maximum=100_000)

    def core(self) -> CoreConfig:
        """The part of the settings the pure core obeys."""
        return CoreConfig(
            root=self.root, namespace=self.namespace,
            turn_timeout_ms=max(1, round(self.turn_timeout * 1000)),
            max_attempts=self.max_attempts, max_depth=self.max_depth,
            session_ttl_ms=max(1, round(self.session_ttl * 1000)),
            seq_hold_ms=round(self.seq_hold * 1000), max_waiting=self.max_waiting)


def settings_table() -> str:
    """The README's table: every router and worker setting."""
    return markdown_table(RouterConfig, WorkerSettings)


if __name__ == "__main__":
    print(settings_table(), end="")
