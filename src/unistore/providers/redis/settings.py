"""The Redis provider's settings: the seed's mapping, keywords and URLs, each checked
once, and what they make of a connection (:class:`~.connection.Settings`).

Nothing here touches a server: a bad setting is a :class:`~unistore.ValidationError`
before anything connects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio.connection import Connection as NodeConnection
from redis.asyncio.connection import SSLConnection, parse_url

from ...errors import ValidationError
from ...model import validate_name
from ...redaction import redact
from .connection import Settings

MAX_SHARDS = 1024
#: Connections one provider opens to one node at most (a caller past them waits for one).
MAX_CONNECTIONS = 256
#: Seconds a round trip may take before the operation fails (StorageConnectionError),
#: and a connection may take to open.
SOCKET_TIMEOUT = 5.0
SOCKET_CONNECT_TIMEOUT = 5.0
#: The connection settings the seed's mapping (and a URL) may carry.
CONNECTION_SETTINGS = frozenset(
    {
        "host",
        "port",
        "db",
        "password",
        "username",
        "ssl",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
        "socket_connect_timeout",
    }
)
#: The provider's own settings.
PROVIDER_SETTINGS = frozenset(
    {"namespace", "shards", "max_connections", "allow_eviction", "socket_timeout", "near_cache", "near_cache_bytes"}
)
#: The near cache's byte bound when none is given (see .nearcache).
NEAR_CACHE_BYTES = 64 << 20
#: How a URL writes a yes or a no.
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class ProviderSettings:
    """A provider's settings, checked: its namespace and shard count, eviction, the
    cluster's nodes (None: one server) and how to connect."""

    namespace: str
    namespace_bytes: bytes
    shards: int
    allow_eviction: bool
    nodes: list[tuple[str, int]] | None
    connection: Settings
    #: The near cache's bounds: items (0: no near cache) and bytes.
    near_cache: int = 0
    near_cache_bytes: int = NEAR_CACHE_BYTES


def provider_settings(given: dict[str, Any]) -> ProviderSettings:
    """The settings of :class:`~.provider.RedisStorageProvider` (the seed's mapping and
    keywords together), checked.

    Raises:
        ValidationError: an unknown setting, a bad namespace, shard count, node or number.
    """
    merged = dict(given)
    namespace = merged.pop("namespace", "default")
    shards = merged.pop("shards", 1)
    url = merged.pop("url", None)
    nodes = merged.pop("cluster_nodes", None)
    max_connections = merged.pop("max_connections", MAX_CONNECTIONS)
    allow_eviction = merged.pop("allow_eviction", False)
    socket_timeout = merged.pop("socket_timeout", SOCKET_TIMEOUT)
    near_cache = merged.pop("near_cache", 0)
    near_cache_bytes = merged.pop("near_cache_bytes", NEAR_CACHE_BYTES)
    unknown = sorted(set(merged) - CONNECTION_SETTINGS)
    if unknown:
        raise ValidationError(f"unknown Redis settings: {', '.join(map(repr, unknown))}")
    namespace_bytes = validate_name(namespace, "namespace")
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise ValidationError(f"shards must be an int from 1 to {MAX_SHARDS}, got {shards!r}")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
        raise ValidationError(f"max_connections must be a positive int, got {max_connections!r}")
    if not isinstance(allow_eviction, bool):
        raise ValidationError(f"allow_eviction must be True or False, got {allow_eviction!r}")
    if isinstance(near_cache, bool) or not isinstance(near_cache, int) or near_cache < 0:
        raise ValidationError(f"near_cache must be an int of items, 0 or more (0: none), got {near_cache!r}")
    if isinstance(near_cache_bytes, bool) or not isinstance(near_cache_bytes, int) or near_cache_bytes < 1:
        raise ValidationError(f"near_cache_bytes must be a positive int, got {near_cache_bytes!r}")
    merged.setdefault("socket_connect_timeout", SOCKET_CONNECT_TIMEOUT)
    for name, value in (
        ("socket_timeout", socket_timeout),
        ("socket_connect_timeout", merged["socket_connect_timeout"]),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValidationError(f"{name} must be a positive number of seconds or None, got {value!r}")
    nodes = None if nodes is None else _cluster_nodes(nodes, merged)
    connection = _connection_settings(url, nodes, merged, max_connections, socket_timeout)
    return ProviderSettings(
        namespace, namespace_bytes, shards, allow_eviction, nodes, connection, near_cache, near_cache_bytes
    )


def url_settings(url: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a Redis URL gives (see :meth:`~.provider.RedisStorageProvider.from_url`),
    with ``settings`` (keywords given beside it) added.

    Raises:
        ValidationError: a malformed URL or setting.
    """
    settings = dict(settings)
    if not isinstance(url, str):
        raise ValidationError(f"url must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    scheme, _, cluster = parts.scheme.partition("+")
    if scheme not in ("redis", "rediss") or cluster not in ("", "cluster"):
        raise ValidationError(
            f"a Redis URL starts with redis://, rediss://, redis+cluster:// or rediss+cluster://, got {redact(url)!r}"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))  # an empty namespace is refused, not "default"
    for name in ("socket_timeout", "socket_connect_timeout"):
        if name in query:
            settings[name] = _number(name, query.pop(name), float)
    for name in ("max_connections", "near_cache", "near_cache_bytes"):
        if name in query:
            settings[name] = _number(name, query.pop(name), int)
    if "allow_eviction" in query:
        text = query.pop("allow_eviction")
        if text.lower() not in _BOOLEANS:
            raise ValidationError(f"allow_eviction must be true or false, got {text!r}")
        settings["allow_eviction"] = _BOOLEANS[text.lower()]
    namespace = query.pop("namespace", "default")
    shards = _number("shards", query.pop("shards", "1"), int)
    if cluster:  # the first node goes to redis-py in the URL (with the credentials and options), all as nodes
        credentials, at, hosts = parts.netloc.rpartition("@")
        nodes = hosts.split(",")
        if parts.path not in ("", "/", "/0"):
            raise ValidationError(
                f"Redis Cluster has database 0 only; the URL names {parts.path[1:]!r}: {redact(url)!r}"
            )
        settings["cluster_nodes"] = nodes
        parts = parts._replace(scheme=scheme, netloc=credentials + at + nodes[0], path="")
    rest = urlunsplit(parts._replace(query=urlencode(query)))
    return {"url": rest, "namespace": namespace, "shards": shards, **settings}


def _number(name: str, text: str, kind: type[int] | type[float]) -> Any:
    """A number given in a URL.

    Raises:
        ValidationError: it is not one.
    """
    try:
        return kind(text)
    except ValueError:
        what = "an int" if kind is int else "a number of seconds"
        raise ValidationError(f"{name} must be {what}, got {text!r}") from None


def _connection_settings(
    url: str | None,
    nodes: list[tuple[str, int]] | None,
    given: dict[str, Any],
    max_connections: int,
    socket_timeout: float | None,
) -> Settings:
    """How to reach Redis, from a URL (what redis-py reads of it) or from the settings.

    Raises:
        ValidationError: a setting redis-py's connections do not take.
    """
    connect = dict(given)
    if url is not None:
        try:
            connect = {**parse_url(url), **connect}
        except ValueError as exc:
            raise ValidationError(f"a Redis URL that does not parse: {exc}") from None
    connection_class: type[NodeConnection] = connect.pop("connection_class", NodeConnection)
    if connect.pop("ssl", False):
        connection_class = SSLConnection
    host, port = connect.pop("host", "localhost"), int(connect.pop("port", 6379))
    connect.pop("socket_timeout", None)  # the provider's own deadline (see .connection)
    settings = Settings(
        tuple(nodes) if nodes is not None else ((host, port),),
        nodes is not None,
        connection_class,
        connect,
        max_connections,
        socket_timeout,
    )
    try:
        settings.make(settings.nodes[0])  # redis-py checks its arguments here (it connects later)
    except TypeError as exc:
        raise ValidationError(f"a Redis setting redis-py does not take: {exc}") from None
    return settings


def _cluster_nodes(nodes: Any, settings: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The ``(host, port)`` of each node given as ``"host:port"`` (``"[v6]:port"``) or a pair.

    Raises:
        ValidationError: no node, a malformed one, or a setting a cluster has no use for.
    """
    clashing = sorted({"host", "port"} & set(settings)) + (["db"] if settings.get("db", 0) != 0 else [])
    if clashing:
        raise ValidationError(f"a cluster is reached through cluster_nodes, not {', '.join(clashing)}")
    if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Iterable):
        raise ValidationError(f"cluster_nodes must be a list of 'host:port', got {nodes!r}")
    found: list[tuple[str, int]] = []
    for node in nodes:
        if isinstance(node, str):
            host, _, port = node.rpartition(":")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        elif isinstance(node, tuple) and len(node) == 2:
            host, port = node
        else:
            raise ValidationError(f"a cluster node is 'host:port' or (host, port), got {node!r}")
        if not isinstance(host, str) or not host or not str(port).isdigit() or not 0 < int(port) < 65536:
            raise ValidationError(f"a cluster node is 'host:port' with a port from 1 to 65535, got {node!r}")
        found.append((host, int(port)))
    if not found:
        raise ValidationError("cluster_nodes names no node")
    return found


__all__ = [
    "CONNECTION_SETTINGS",
    "MAX_CONNECTIONS",
    "MAX_SHARDS",
    "PROVIDER_SETTINGS",
    "SOCKET_CONNECT_TIMEOUT",
    "SOCKET_TIMEOUT",
    "ProviderSettings",
    "provider_settings",
    "url_settings",
]
