"""Settings: one declaration per setting, everything else derived from it.

A settings class is a frozen dataclass whose fields are declared with :func:`setting`. The
field's name gives the option (``turn_timeout`` -> ``--turn-timeout``) and the variable
(``CLOUDBUNCH_TURN_TIMEOUT``), its annotation the type (``str``, ``int``, ``float`` or a
``Literal`` of choices), and the :func:`setting` call the default, the help, the bounds and
any further check. From that one declaration come:

- validation, whoever builds the object (``__post_init__`` of :class:`SettingsBase`);
- the environment loading (:meth:`SettingsBase.from_env`: option, else variable, else default);
- the command-line options and their ``--help`` (``router.cli`` reads :func:`declarations`);
- the README's table of settings (:func:`markdown_table`, checked by a test).

:class:`Settings` is what a frontend needs (where the broker is, how queues are named);
:class:`WorkerSettings` adds what a worker needs. The router's settings extend them in
``router.config``. The environment is read only where a program starts (``from_env``).
"""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from .errors import ConfigError

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_NAMESPACE = "cb"
ENV_PREFIX = "CLOUDBUNCH_"

QueueType = Literal["quorum", "classic"]

AMQP_SCHEMES = ("amqp", "amqps")

_KEY = "cloudbunch.setting"
S = TypeVar("S", bound="SettingsBase")


@dataclass(frozen=True, slots=True)
class Declaration:
    """Everything known about one setting, gathered from its field."""

    name: str
    kind: type
    """``str``, ``int``, ``float`` or ``bool`` (a ``Literal`` is ``str`` with ``choices``)."""
    default: Any
    help: str
    metavar: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    """The lowest value allowed (``above`` says whether it is excluded)."""
    maximum: float | None = None
    """The highest value allowed."""
    above: bool = False
    required: bool = False
    check: Callable[[Any, Declaration], None] | None = None
    env_prefix: str = ENV_PREFIX
    optional: bool = False
    """None is allowed (the annotation is ``X | None``)."""

    @property
    def option(self) -> str:
        """The command-line option, e.g. ``--turn-timeout``."""
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable, e.g. ``CLOUDBUNCH_TURN_TIMEOUT``."""
        return self.env_prefix + self.name.upper()

    @property
    def where(self) -> str:
        """How a person sets it: ``--turn-timeout / CLOUDBUNCH_TURN_TIMEOUT``."""
        return f"{self.option} / {self.env}"

    def parse(self, raw: str) -> Any:
        """Convert a variable's text to the setting's type (ConfigError naming the variable)."""
        if self.kind is str:
            return raw
        if self.kind is bool:
            text = raw.strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ConfigError(f"{self.where} must be 1 or 0, not {raw!r}")
        try:
            return self.kind(raw)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            raise ConfigError(f"{self.where} must be {what}, not {raw!r}") from None

    def validate(self, value: Any) -> None:
        """Raise ConfigError, naming the option and the variable, if ``value`` is not allowed."""
        if value is None and self.optional:
            return
        if self.required and not value:
            raise ConfigError(f"{self.name.replace('_', ' ')} is required: pass {self.option} "
                              f"{self.metavar} or set {self.env}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{self.where} must be "
                              f"{' or '.join(repr(c) for c in self.choices)}, not {value!r}")
        if self.kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{self.where} must be 1 or 0, not {value!r}")
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, int | float) or (
                    self.kind is int and not isinstance(value, int)):
                what = "a whole number" if self.kind is int else "a number"
                raise ConfigError(f"{self.where} must be {what}, not {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{self.where} must be a finite number, not {value!r}")
            low = self.minimum is not None and (value <= self.minimum if self.above
                                                else value < self.minimum)
            if low or (self.maximum is not None and value > self.maximum):
                if self.maximum is not None and self.minimum is not None:
                    bound = f"from {self.minimum:g} to {self.maximum:g}"
                elif self.maximum is not None:
                    bound = f"{self.maximum:g} or less"
                else:
                    bound = (f"above {self.minimum:g}" if self.above
                             else f"{self.minimum:g} or more")
                raise ConfigError(f"{self.where} must be {bound}, not {value!r}")
        if self.check is not None:
            self.check(value, self)


def setting(default: Any, help: str, *, metavar: str, minimum: float | None = None,
            above: bool = False, maximum: float | None = None, required: bool = False,
            check: Callable[[Any, Declaration], None] | None = None) -> Any:
    """Declare one setting as a dataclass field (see the module docstring)."""
    meta = {"help": help, "metavar": metavar, "minimum": minimum, "above": above,
            "maximum": maximum, "required": required, "check": check}
    return field(default=default, metadata={_KEY: meta})


def declarations(cls: type[SettingsBase]) -> list[Declaration]:
    """The declared settings of a settings class, in field order."""
    cached: list[Declaration] | None = cls.__dict__.get("_declarations_cache")
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    found: list[Declaration] = []
    for f in fields(cls):  # type: ignore[arg-type]
        meta = f.metadata.get(_KEY)
        if meta is None:
            continue
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = type(None) in args and len(args) == 2
        if optional:
            hint = next(a for a in args if a is not type(None))
        choices: tuple[str, ...] | None = None
        if typing.get_origin(hint) is Literal:
            choices = tuple(typing.get_args(hint))
            kind: type = str
        elif hint in (str, int, float, bool):
            kind = hint
        else:
            raise TypeError(f"setting {f.name} has unsupported type {hint!r}")
        default = None if f.default is MISSING else f.default
        found.append(Declaration(name=f.name, kind=kind, default=default, choices=choices,
                                 env_prefix=cls.env_prefix, optional=optional, **meta))
    type.__setattr__(cls, "_declarations_cache", found)
    return found


class SettingsBase:
    """Base of settings classes: validation and environment loading from the declarations."""

    __slots__ = ()
    _declarations_cache: ClassVar[list[Declaration] | None] = None
    env_prefix: ClassVar[str] = ENV_PREFIX
    """The variables' prefix: ``CLOUDBUNCH_`` + the setting's name in capitals."""

    def __post_init__(self) -> None:
        for decl in declarations(type(self)):
            decl.validate(getattr(self, decl.name))

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None, /,
                 **options: Any) -> S:
        """Build the settings: an option given here (not None; text is converted like a
        variable), else the variable, else the default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for decl in declarations(cls):
            value = options.pop(decl.name, None)
            if isinstance(value, str):
                value = decl.parse(value)
            if value is None and decl.env in env:
                value = decl.parse(env[decl.env])
            if value is not None:
                values[decl.name] = value
        if options:
            raise TypeError(f"{cls.__name__} has no setting {', '.join(sorted(options))}")
        return cls(**values)


def borrow(cls: type[SettingsBase], name: str) -> Any:
    """The field of setting ``name`` of ``cls``, to reuse in another settings class: the same
    declaration (default, help, bounds), not a copy of it."""
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name == name:
            return field(default=f.default, metadata=f.metadata)
    raise TypeError(f"{cls.__name__} declares no setting {name!r}")


def check_url_scheme(schemes: tuple[str, ...]) -> Callable[[Any, Declaration], None]:
    """A check refusing a URL whose scheme no client here understands (it would hang later)."""
    def check(url: Any, decl: Declaration) -> None:
        if urlsplit(str(url)).scheme.lower() not in schemes:
            raise ConfigError(f"{decl.where} must start with "
                              f"{' or '.join(s + '://' for s in schemes)}, "
                              f"not {str(url).split('@')[-1]!r}")
    return check


def check_namespace(value: str) -> str:
    """Validate a namespace: non-empty, no spaces, no braces."""
    if not value or any(c.isspace() or c in "{}" for c in value):
        raise ConfigError(f"namespace must be a non-empty word without spaces or braces, "
                          f"not {value!r} (set --namespace or CLOUDBUNCH_NAMESPACE)")
    return value


def _namespace(value: Any, decl: Declaration) -> None:
    check_namespace(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings(SettingsBase):
    """Where the broker is and how its queues are named and declared (what a frontend needs)."""

    amqp_url: str = setting(DEFAULT_AMQP_URL, "RabbitMQ URL (amqp:// or amqps://)",
                            metavar="URL", check=check_url_scheme(AMQP_SCHEMES))
    namespace: str = setting(DEFAULT_NAMESPACE, "prefix of every queue and key, so "
                             "deployments can share servers", metavar="NS", check=_namespace)
    queue_type: QueueType = setting("quorum", "type of every shared queue: quorum or classic",
                                    metavar="TYPE")
    partitions: int = setting(0, "ingress partitions, each owned by one router replica "
                              "(docs/scaling.md); routers and frontends set the same; 0: "
                              "one shared ingress queue (protocol 1.1)", metavar="N",
                              minimum=0, maximum=256)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings(Settings):
    """What a worker serving services needs: the connection and how much it takes at once."""

    prefetch: int = setting(16, "dispatches handled at once per service", metavar="N",
                            minimum=1)


def markdown_table(*classes: type[SettingsBase]) -> str:
    """The settings of ``classes`` as a Markdown table (option, variable, default, meaning)."""
    rows = ["| option | variable | default | meaning |", "|---|---|---|---|"]
    seen: set[str] = set()
    for cls in classes:
        for decl in declarations(cls):
            if decl.name in seen:
                continue
            seen.add(decl.name)
            default = "(required)" if decl.required else f"`{decl.default}`"
            rows.append(f"| `{decl.option}` | `{decl.env}` | {default} | {decl.help} |")
    return "\n".join(rows) + "\n"
