"""Build a provider from a URL: ``open_provider("lmdb:///var/lib/app/store?namespace=x")``.

Each scheme maps to one opener; an opener takes the split URL and its query
parameters, pops what it understands, and anything left over is an error, so a
misspelt option never passes silently.

:func:`open_existing` opens only what exists (maintenance, and the ``unistore``
command's reads, never create a store or a namespace), and :func:`namespace_urls`
names every namespace of the store a URL points at.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit

from .errors import StorageError, StoreNotFoundError, ValidationError
from .providers.base import StorageProvider
from .providers.lmdb import LmdbStorageProvider
from .providers.lmdb.provider import existing_store, store_namespaces
from .providers.maintenance import Namespace
from .providers.memory import MemoryStorageProvider
from .redaction import redact


class Opening(NamedTuple):
    """What an opener makes of a URL: the call that makes its provider, the call that
    lists its store's namespaces (a store-wide question, asked with or without a namespace),
    whether the store outlives the process that opens it, and the call that names the
    directory a new store there would need made first (None: nothing is missing)."""

    construct: Callable[[], StorageProvider[Any]]
    namespaces: Callable[[], Awaitable[list[Namespace]]]
    lasting: bool = True
    missing_parent: Callable[[], str | None] = lambda: None


def _asking(construct: Callable[[], StorageProvider[Any]]) -> Callable[[], Awaitable[list[Namespace]]]:
    """The namespaces as a provider of the store tells them (its own namespace need not exist)."""

    async def namespaces() -> list[Namespace]:
        async with construct() as provider:
            return await provider.namespaces()

    return namespaces


# An opener pops the options it knows and returns its Opening, used once no option is
# left over, so a bad URL creates nothing.
# ``create`` False: the provider must find its store and namespace (see open_existing).
Opener = Callable[[SplitResult, dict[str, str], bool], Opening]


def _open_memory(url: SplitResult, params: dict[str, str], create: bool) -> Opening:
    if url.netloc or url.path:
        raise ValidationError(f"url: memory:// takes no host or path, got {redact(url.geturl())!r}")
    if not create:
        raise StoreNotFoundError("memory://: a memory store lives in one process; there is none to open")
    construct = functools.partial(MemoryStorageProvider, namespace=params.pop("namespace", "default"))
    return Opening(construct, _asking(construct), lasting=False)


def _number_option(params: dict[str, str], name: str) -> dict[str, int]:
    """An option written as decimal digits, as an int; its range is checked by the provider."""
    if name not in params:
        return {}
    text = params.pop(name)
    if not (text.isascii() and text.isdigit()):
        raise ValidationError(f"url: option {name} must be a positive integer, got {text!r}")
    if len(text) > _MOST_DIGITS:  # int() refuses 4300 digits; no option is near this size
        raise ValidationError(f"url: option {name} is out of range ({len(text)} digits)")
    return {name: int(text)}


#: The most digits of a number option: more than any size a machine has.
_MOST_DIGITS = 40


def lmdb_path(url: SplitResult) -> str:
    """The store directory of an lmdb URL: ``lmdb:///abs/path`` (or ``lmdb://localhost/abs/path``),
    or ``lmdb://./rel/path``, relative to the current directory."""
    if url.netloc in ("", "localhost") and url.path.startswith("/"):
        return unquote(url.path)
    if url.netloc == "." and (url.path.startswith("/") or not url.path):
        return "." + unquote(url.path)
    raise ValidationError(
        "url: lmdb URLs take an absolute path, lmdb:///path/to/store, or one relative to the "
        f"current directory, lmdb://./path/to/store; got {redact(url.geturl())!r}"
    )


def upgrade_store(url: str) -> None:
    """Bring the LMDB store ``url`` names to this release's format, in place (what its first
    open for writing does; see :mod:`unistore.providers.lmdb.upgrade`); nothing if it is.

    Raises:
        ValidationError: not an lmdb URL (no other store has a format to upgrade), or a bad one.
        StoreNotFoundError: there is no store there.
    """
    parts, params, _ = _opening(url, create=False)
    if parts.scheme != "lmdb":
        raise ValidationError(f"upgrade: only LMDB stores have a format to upgrade; {redact(url)!r} is not one")
    params.pop("namespace", None)  # (the whole store is upgraded)
    with existing_store(lmdb_path(parts), upgrade=True, **_lmdb_options(params)):
        pass


def _lmdb_options(params: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {"durability": params.pop("durability", "sync")}
    options.update(_number_option(params, "map_size"))
    options.update(_number_option(params, "max_readers"))
    return options


def missing_parent(path: str) -> str | None:
    """The directory that must exist before a new store at ``path`` is made, if it does not."""
    parent = os.path.dirname(os.path.abspath(path))
    return None if os.path.exists(path) or os.path.isdir(parent) else parent


def _open_lmdb(url: SplitResult, params: dict[str, str], create: bool) -> Opening:
    path = lmdb_path(url)
    options = _lmdb_options(params)
    namespace = params.pop("namespace", "default")
    # The store's namespaces are read from the store: its "default" namespace need not exist.
    return Opening(
        functools.partial(LmdbStorageProvider, path, namespace=namespace, create=create, **options),
        functools.partial(asyncio.to_thread, store_namespaces, path, **options),
        missing_parent=functools.partial(missing_parent, path),
    )


#: The query options of a Redis URL: the provider's and those redis-py reads from a URL.
_REDIS_OPTIONS = frozenset(
    {"namespace", "shards", "max_connections", "allow_eviction", "socket_timeout", "socket_connect_timeout"}
    | {"near_cache", "near_cache_bytes"}
    | {"ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile"}
)


#: The path of a Redis URL: none, or a database number.
_REDIS_DATABASE = re.compile(r"/?|/[0-9]+/?")


def _open_redis(url: SplitResult, params: dict[str, str], create: bool) -> Opening:
    # Opening creates nothing on the server (a namespace is recorded by its first
    # operation): open_existing asks the server before that.
    _number_option(params, "shards")  # its digits checked here; the URL itself goes to from_url
    if not url.scheme.endswith("+cluster"):  # (a cluster's nodes are checked one by one by the provider)
        try:
            url.port  # noqa: B018  (it parses the port, raising for a bad one)
        except ValueError as exc:
            raise ValidationError(f"url: bad port in {redact(url.geturl())!r}: {exc}") from None
    if not _REDIS_DATABASE.fullmatch(unquote(url.path)):  # (redis-py would read /abc as database 0)
        raise ValidationError(
            f"url: a Redis URL's path is its database number (/0, the default, or /N): {redact(url.geturl())!r}"
        )
    for name in _REDIS_OPTIONS & set(params):
        del params[name]
    try:
        from .providers.redis import RedisStorageProvider  # noqa: PLC0415  (redis-py only for a Redis URL)
    except ImportError as exc:
        raise StorageError(f"url: {exc}") from exc  # (not the URL: it may hold a password)
    construct = functools.partial(RedisStorageProvider.from_url, url.geturl())
    return Opening(construct, _asking(construct))


_OPENERS: dict[str, Opener] = {
    "lmdb": _open_lmdb,
    "memory": _open_memory,
    "redis": _open_redis,
    "rediss": _open_redis,
    "redis+cluster": _open_redis,
    "rediss+cluster": _open_redis,
}


def open_provider(url: str) -> StorageProvider[Any]:
    """The provider a URL names; a store or namespace that does not exist yet is
    made by its first write (an LMDB store directory at once).

    Schemes: ``lmdb:///abs/path`` or ``lmdb://./rel/path`` (relative to the
    current directory) (options: ``namespace``, ``durability``, ``map_size``,
    ``max_readers``), ``redis://[user:password@]host:port/db`` and
    ``rediss://`` (TLS), ``redis+cluster://[user:password@]host:port,host:port``
    and ``rediss+cluster://`` (a Redis Cluster, found from any of its nodes)
    (options: ``namespace``, ``shards``, and redis-py's ``ssl_*`` and
    ``socket_*timeout``), and ``memory://`` (option: ``namespace``).

    Raises:
        ValidationError: an unknown scheme, a malformed URL or an unknown option.
    """
    return _opening(url, create=True)[2].construct()


def open_lasting(url: str, purpose: str) -> StorageProvider[Any]:
    """:func:`open_provider` for a store that must outlive this process (what a command
    writes must still be there when it has ended): ``memory://`` is refused, and so is a
    new LMDB store whose parent directory does not exist (a mistyped path is not made).

    Raises:
        ValidationError: as :func:`open_provider`, the store dies with the process, or
            its parent directory is missing (``purpose`` names what it was wanted for, in
            the message).
    """
    _, _, opening = _opening(url, create=True)
    if not opening.lasting:
        raise ValidationError(
            f"{purpose}: {redact(url)} keeps nothing once this process ends; use a lasting store "
            "(lmdb://, redis://, redis+cluster://)"
        )
    missing = opening.missing_parent()
    if missing is not None:
        raise ValidationError(
            f"{purpose}: no directory {missing!r} to make the store {redact(url)} in; "
            "create it first if that is the place you meant"
        )
    return opening.construct()


async def open_existing(url: str) -> StorageProvider[Any]:
    """The provider a URL names, if its store and namespace exist; nothing is
    created (an LMDB store is looked for at once, a Redis namespace asked of the
    server). ``memory://`` never names one that exists: a memory store lives
    and dies with one provider.

    Raises:
        ValidationError: as :func:`open_provider`.
        StoreNotFoundError: the store or the namespace does not exist.
        StorageConnectionError: the Redis server is unreachable.
    """
    _, params, opening = _opening(url, create=False)  # memory:// is refused here
    provider = opening.construct()
    if not await provider.namespace_exists():
        await provider.cleanup()
        namespace = params.get("namespace", "default")
        raise StoreNotFoundError(f"{redact(url)}: the store holds no namespace {namespace!r}", {"url": redact(url)})
    return provider


async def namespace_urls(url: str) -> list[str]:
    """The URL of every namespace of the store ``url`` points at (itself if it names
    one with ``?namespace=``); nothing is opened for writing, nothing created. A
    Redis namespace's URL carries its shard count.

    Raises:
        ValidationError: as :func:`open_provider`.
        StoreNotFoundError: the store does not exist, or holds no namespace.
        StorageConnectionError: the Redis server is unreachable.
    """
    _, params, opening = _opening(url, create=False)  # memory:// is refused here
    if "namespace" in params:
        return [url]
    known = await opening.namespaces()
    if not known:
        raise StoreNotFoundError(f"{redact(url)}: the store holds no namespace", {"url": redact(url)})
    return [_with_options(url, params, {"namespace": found.name, **found.settings}) for found in known]


def namespace_of(url: str) -> str | None:
    """The namespace a URL names with ``?namespace=`` (None: it names none).

    Raises:
        ValidationError: as :func:`open_provider`.
    """
    return _parse(url)[1].get("namespace")


def with_namespace(url: str, name: str) -> str:
    """``url`` naming the namespace ``name`` (in place of the one it names, if any).

    Raises:
        ValidationError: as :func:`open_provider`.
    """
    return _with_options(url, _parse(url)[1], {"namespace": name})


def _with_options(url: str, params: dict[str, str], changes: dict[str, str]) -> str:
    base = url.partition("?")[0]  # (urlunsplit would drop the empty host of lmdb:///path)
    return f"{base}?{urlencode({**params, **changes})}"


def _parse(url: str) -> tuple[SplitResult, dict[str, str]]:
    """A URL split, and its query options (each given once), checked as far as its
    scheme and shape go.

    Raises:
        ValidationError: not a str, malformed, a fragment, an unknown scheme, an option twice.
    """
    if not isinstance(url, str):
        raise ValidationError(f"url must be a str, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValidationError(f"url: {redact(url)!r} does not parse: {exc}") from None
    if parts.fragment:
        raise ValidationError(f"url: {redact(url)!r} has a '#' fragment; write '#' in a path as %23")
    if parts.scheme not in _OPENERS:
        known = ", ".join(f"{scheme}://" for scheme in sorted(_OPENERS))
        raise ValidationError(f"url: unknown scheme in {redact(url)!r}; known: {known}")
    params: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in params:
            raise ValidationError(f"url: option {name!r} is given twice in {redact(url)!r}")
        params[name] = value
    return parts, params


def _opening(url: str, create: bool) -> tuple[SplitResult, dict[str, str], Opening]:
    """A URL split, its options, and its :class:`Opening`, every option checked."""
    parts, params = _parse(url)
    left = dict(params)
    opening = _OPENERS[parts.scheme](parts, left, create)
    if left:
        raise ValidationError(f"url: unknown option(s) {', '.join(sorted(left))} in {redact(url)!r}")
    return parts, params, opening


__all__ = [
    "lmdb_path",
    "missing_parent",
    "namespace_of",
    "namespace_urls",
    "open_existing",
    "open_lasting",
    "open_provider",
    "upgrade_store",
    "with_namespace",
]
