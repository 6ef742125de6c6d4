"""Passwords kept out of messages: :func:`redact` writes a URL as it may be shown.

A leaf: every layer that names a store in a message (the providers, the URL openers,
the ``unistore`` command) imports it, so it imports nothing of the package.
"""

from __future__ import annotations

import re

#: A query option that holds a password (any option whose name says so), up to its value.
_PASSWORD_OPTION = re.compile(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with the password of its user info, and the value of any query option
    named like a password, written as ``***``: for messages."""
    scheme, found, rest = url.partition("://")
    if not found:
        return url
    end = min((at for at in map(rest.find, "/?#") if at >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    user, colon, _ = userinfo.partition(":")
    tail = _PASSWORD_OPTION.sub(r"\1***", rest[end:])
    return scheme + found + (user + colon + "***" * bool(colon) + at) + hosts + tail


__all__ = ["redact"]
