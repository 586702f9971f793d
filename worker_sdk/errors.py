"""Every failure CloudBunch raises, one class each, under :class:`CloudBunchError`."""

from __future__ import annotations


class CloudBunchError(Exception):
    """Base class of every CloudBunch error."""


class ConfigError(CloudBunchError):
    """A setting (option or CLOUDBUNCH_* variable) has an invalid value."""


class BrokerUnavailable(CloudBunchError):
    """RabbitMQ could not be reached (or the connection was lost for good)."""


class PublishFailed(CloudBunchError):
    """The broker did not confirm a publish (negative ack or lost connection)."""


class MessageRefused(CloudBunchError):
    """The broker cannot take a message for what it carries (a routing key or id over 255
    bytes, headers too big for a frame): sending it again cannot help."""


class ActionError(CloudBunchError):
    """A handler used the context wrongly (two actions in one turn, pass on start...)."""


class NoRouter(CloudBunchError):
    """No router has declared the namespace's ingress queue: client messages cannot go."""
