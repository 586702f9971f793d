"""URLs as CloudBunch shows them: the one ``redact`` used by every log and error message."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def redact(url: str) -> str:
    """The URL with its password masked (``amqp://u:***@host/``), fit for logs and errors.

    Works for URLs that list several hosts (``redis+cluster://u:pw@h1:1,h2:2/0``) and for
    comma-separated lists of URLs (``amqp://u:p@h1/,amqp://u:p@h2/``); a URL without a
    password comes back unchanged, one that cannot be parsed as a placeholder.
    """
    if "," in url:
        # Each part on its own: a cluster URL's later hosts are parts without a password.
        return ",".join(redact(part) for part in url.split(","))
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    # By hand rather than .hostname/.port: a cluster URL may list several hosts.
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hosts}"))
