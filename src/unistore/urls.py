"""Build a provider from a URL: ``open_provider("lmdb:///var/lib/app/store?namespace=x")``.

Each scheme maps to one opener; an opener takes the split URL and its query
parameters, pops what it understands, and anything left over is an error, so a
misspelt option never passes silently.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from .errors import StorageError, ValidationError
from .providers.base import StorageProvider
from .providers.lmdb import LmdbStorageProvider
from .providers.memory import MemoryStorageProvider


def redact(url: str) -> str:
    """``url`` with the password of its user info, if any, written as ``***``: for messages."""
    scheme, found, rest = url.partition("://")
    if not found:
        return url
    end = min((at for at in map(rest.find, "/?#") if at >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return scheme + found + (user + colon + "***" * bool(colon) + at) + hosts + rest[end:]


# An opener pops the options it knows and returns the constructor to call once
# no option is left over, so a bad URL creates nothing.
Opener = Callable[[SplitResult, dict[str, str]], Callable[[], StorageProvider[Any]]]


def _open_memory(url: SplitResult, params: dict[str, str]) -> Callable[[], StorageProvider[Any]]:
    if url.netloc or url.path:
        raise ValidationError(f"url: memory:// takes no host or path, got {redact(url.geturl())!r}")
    return functools.partial(MemoryStorageProvider, namespace=params.pop("namespace", "default"))


def _number_option(params: dict[str, str], name: str) -> dict[str, int]:
    """An option written as decimal digits, as an int; its range is checked by the provider."""
    if name not in params:
        return {}
    text = params.pop(name)
    if not (text.isascii() and text.isdigit()):
        raise ValidationError(f"url: option {name} must be a positive integer, got {text!r}")
    return {name: int(text)}


def _open_lmdb(url: SplitResult, params: dict[str, str]) -> Callable[[], StorageProvider[Any]]:
    if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
        raise ValidationError(
            f"url: lmdb URLs take an absolute path, lmdb:///path/to/store; got {redact(url.geturl())!r}"
        )
    options: dict[str, Any] = {"durability": params.pop("durability", "sync")}
    options.update(_number_option(params, "map_size"))
    options.update(_number_option(params, "max_readers"))
    namespace = params.pop("namespace", "default")
    return functools.partial(LmdbStorageProvider, unquote(url.path), namespace=namespace, **options)


#: The query options of a Redis URL: the provider's and those redis-py reads from a URL.
_REDIS_OPTIONS = frozenset(
    {"namespace", "shards", "ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "socket_timeout"}
    | {"socket_connect_timeout"}
)


def _open_redis(url: SplitResult, params: dict[str, str]) -> Callable[[], StorageProvider[Any]]:
    _number_option(params, "shards")  # its digits checked here; the URL itself goes to from_url
    for name in _REDIS_OPTIONS & set(params):
        del params[name]
    try:
        from .providers.redis import RedisStorageProvider  # noqa: PLC0415  (redis-py only for a Redis URL)
    except ImportError as exc:
        raise StorageError(f"url: {exc}") from exc  # (not the URL: it may hold a password)
    return functools.partial(RedisStorageProvider.from_url, url.geturl())


_OPENERS: dict[str, Opener] = {
    "lmdb": _open_lmdb,
    "memory": _open_memory,
    "redis": _open_redis,
    "rediss": _open_redis,
    "redis+cluster": _open_redis,
    "rediss+cluster": _open_redis,
}


def open_provider(url: str) -> StorageProvider[Any]:
    """The provider a URL names.

    Schemes: ``lmdb:///abs/path`` (options: ``namespace``, ``durability``,
    ``map_size``, ``max_readers``), ``redis://[user:password@]host:port/db`` and
    ``rediss://`` (TLS), ``redis+cluster://[user:password@]host:port,host:port``
    and ``rediss+cluster://`` (a Redis Cluster, found from any of its nodes)
    (options: ``namespace``, ``shards``, and redis-py's ``ssl_*`` and
    ``socket_*timeout``), and ``memory://`` (option: ``namespace``).

    Raises:
        ValidationError: an unknown scheme, a malformed URL or an unknown option.
    """
    if not isinstance(url, str):
        raise ValidationError(f"url must be a str, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValidationError(f"url: {redact(url)!r} does not parse: {exc}") from None
    if parts.fragment:
        raise ValidationError(f"url: {redact(url)!r} has a '#' fragment; write '#' in a path as %23")
    opener = _OPENERS.get(parts.scheme)
    if opener is None:
        known = ", ".join(f"{scheme}://" for scheme in sorted(_OPENERS))
        raise ValidationError(f"url: unknown scheme in {redact(url)!r}; known: {known}")
    params: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in params:
            raise ValidationError(f"url: option {name!r} is given twice in {redact(url)!r}")
        params[name] = value
    construct = opener(parts, params)
    if params:
        raise ValidationError(f"url: unknown option(s) {', '.join(sorted(params))} in {redact(url)!r}")
    return construct()


__all__ = ["open_provider", "redact"]
