"""One ``redact`` for every URL CloudBunch prints: the password masked, nothing else lost."""

from __future__ import annotations

import pytest

from worker_sdk.urls import redact


@pytest.mark.parametrize(("url", "shown"), [
    ("amqp://u:p@h:5672/v", "amqp://u:***@h:5672/v"),
    ("redis://:pw@host:6380/2", "redis://:***@host:6380/2"),
    ("rediss://u:pw@host/0?ssl_cert_reqs=none", "rediss://u:***@host/0?ssl_cert_reqs=none"),
    ("redis+cluster://u:pw@h1:1,h2:2/0", "redis+cluster://u:***@h1:1,h2:2/0"),
    ("amqp://h/", "amqp://h/"),
    ("redis://user@h/0", "redis://user@h/0"),
    ("amqp://[::1", "<unparsable URL>"),
])
def test_redact_masks_the_password_only(url: str, shown: str) -> None:
    assert redact(url) == shown
