"""The Redis provider: items shared by every process and machine that reaches one Redis.

An item is the codec's record under one key (:mod:`.layout`), so a load is one
GET decoded by the same core as LMDB; a save or delete is one Lua script
(:mod:`.scripts`) that writes the record and every index entry atomically. A
namespace may be split over ``shards`` hash-tagged shards, an item going to the
shard its key hashes to; bulk operations cost one script or MGET per shard, and
a search plans each shard through the index layer and reads them in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, ClusterDownError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ... import index
from ...codec import PreparedSave, live_item, load_item, no_surrogate_id, prepare_many, prepare_restore, prepare_save
from ...core import pack_record, unpack_item
from ...errors import StorageConnectionError, StorageCorruptionError, StorageError, ValidationError
from ...maintenance import Usage, merge
from ...model import (
    StorageItem,
    StorageQuery,
    StorageResult,
    Tags,
    now_micros,
    validate_key,
    validate_keys,
    validate_name,
)
from ...urls import redact
from ..base import StorageProvider
from . import layout, scripts
from .check import check_shard, namespace_exists, scan_page, shard_usage
from .check import namespaces as list_namespaces

_T = TypeVar("_T")

#: What a candidate costs on each path, in µs, on loopback (docs/benchmarks.md):
#: SCAN visits a key for about half a microsecond of server time; a candidate
#: reached through a set costs its share of an SSCAN page and of an MGET.
COSTS = index.Costs(scan=0.5, fetch=9.0, posting=1.0, time_entry=1.0)
#: Candidates read per round trip by a search.
SEARCH_CHUNK = 256
#: Keys a SCAN visits per call.
SCAN_COUNT = 1000
#: Expired items one purge script removes at most.
PURGE_BATCH = 1000
MAX_SHARDS = 1024

#: Connections a cluster client opens to one node at most (redis-py's default, 100,
#: refused 40 concurrent searches over 5 shards: it raises rather than waits).
CLUSTER_CONNECTIONS = 1000
#: The settings that are seconds.
TIMEOUTS = frozenset({"socket_timeout", "socket_connect_timeout"})
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
        "socket_timeout",
        "socket_connect_timeout",
    }
)


def _retry() -> Retry:
    """redis-py's own retry: connection loss and timeouts, three times, backing off to half a second."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Redis errors as unistore's, the cause chained."""
    try:
        yield
    except AuthenticationError as exc:
        raise StorageConnectionError(f"Redis refused the credentials: {exc}") from exc
    except (RedisConnectionError, RedisTimeoutError, ClusterDownError, OSError) as exc:
        raise StorageConnectionError(f"Redis is unreachable: {exc}") from exc
    except RedisClusterException as exc:  # redis-py's own, not a RedisError
        if isinstance(exc.__cause__, (RedisConnectionError, RedisTimeoutError, OSError)):
            raise StorageConnectionError(f"Redis Cluster is unreachable: {exc}") from exc
        raise StorageError(f"Redis Cluster refused the operation: {exc}") from exc
    except RedisError as exc:
        raise StorageError(f"Redis refused the operation: {exc}") from exc


class RedisStorageProvider(StorageProvider[Any]):
    """Items in Redis, shared by every process that reaches it.

    Args:
        config: the seed's mapping: ``host``, ``port``, ``db``, ``password``,
            ``username``, ``ssl`` (and ``ssl_ca_certs``, ``ssl_certfile``,
            ``ssl_keyfile``, ``ssl_cert_reqs``, ``socket_timeout``,
            ``socket_connect_timeout``), ``namespace`` and ``shards``; for
            Redis Cluster, ``cluster_nodes`` (``"host:port"`` strings or
            ``(host, port)`` pairs: the nodes to discover the cluster from)
            instead of ``host``, ``port`` and ``db``.
        **settings: the same, as keywords (they win over ``config``).

    Raises:
        ValidationError: an unknown setting, a bad namespace, shard count or node.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, **settings: Any) -> None:
        merged = {**(config or {}), **settings}
        namespace = merged.pop("namespace", "default")
        shards = merged.pop("shards", 1)
        url = merged.pop("url", None)
        nodes = merged.pop("cluster_nodes", None)
        unknown = sorted(set(merged) - CONNECTION_SETTINGS)
        if unknown:
            raise ValidationError(f"unknown Redis settings: {', '.join(map(repr, unknown))}")
        namespace_bytes = validate_name(namespace, "namespace")
        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
            raise ValidationError(f"shards must be an int from 1 to {MAX_SHARDS}, got {shards!r}")
        self.namespace = namespace
        self.shards = shards
        self._url = url
        self._nodes = None if nodes is None else _cluster_nodes(nodes, merged)
        self._settings = merged
        self._prefixes = [layout.shard_prefix(namespace_bytes, shard, shards) for shard in range(shards)]
        self._shards_key = layout.shards_key(namespace_bytes)
        self._connections: dict[asyncio.AbstractEventLoop, _Connection] = {}  # by the event loop using it
        #: The closes cleanup() has begun and that have not ended (any cleanup of their loop waits for them).
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, **settings: Any) -> RedisStorageProvider:
        """A provider for ``redis://[user:password@]host:port/db?namespace=x&shards=N``
        (``rediss://`` for TLS), or for the Redis Cluster that the nodes of
        ``redis+cluster://[user:password@]host:port,host:port,...?namespace=x&shards=N``
        belong to (``rediss+cluster://`` for TLS); other query parameters go to redis-py.

        Raises:
            ValidationError: a malformed URL or setting.
        """
        if not isinstance(url, str):
            raise ValidationError(f"url must be a str, got {type(url).__name__}")
        parts = urlsplit(url)
        scheme, _, cluster = parts.scheme.partition("+")
        if scheme not in ("redis", "rediss") or cluster not in ("", "cluster"):
            raise ValidationError(
                "a Redis URL starts with redis://, rediss://, redis+cluster:// or rediss+cluster://, "
                f"got {redact(url)!r}"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))  # an empty namespace is refused, not "default"
        for name in TIMEOUTS & set(query):  # redis-py would refuse them only at the first operation
            try:
                float(query[name])
            except ValueError:
                raise ValidationError(f"{name} must be a number of seconds, got {query[name]!r}") from None
        namespace = query.pop("namespace", "default")
        shards_text = query.pop("shards", "1")
        try:
            shards = int(shards_text)
        except ValueError:
            raise ValidationError(f"shards must be an int, got {shards_text!r}") from None
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
        return cls(url=rest, namespace=namespace, shards=shards, **settings)

    def __repr__(self) -> str:
        if self._nodes is not None:
            where = ",".join(f"{host}:{port}" for host, port in self._nodes)
            return f"RedisStorageProvider(cluster={where!r}, namespace={self.namespace!r}, shards={self.shards})"
        where = self._settings.get("host", "localhost") if self._url is None else urlsplit(self._url).hostname
        return f"RedisStorageProvider(host={where!r}, namespace={self.namespace!r}, shards={self.shards})"

    # -- the client ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _step(self) -> AsyncIterator[Any]:
        """``async with self._step() as client``: the client of this event loop and process
        for one step of an operation (see :meth:`_Connection.step`).

        Raises:
            ValidationError: the namespace is split over another number of shards.
            StorageConnectionError: Redis is unreachable.
        """
        async with (await self._connection()).step() as client:
            yield client

    async def _connection(self) -> _Connection:
        """The connection of this event loop and process (a fork or another loop gets its
        own), made once however many tasks ask for it at once."""
        loop = asyncio.get_running_loop()
        connection = self._connections.get(loop)
        if connection is None or connection.pid != os.getpid() or _failed(connection.ready):
            client = self._new_client()
            closer = self._closer(loop, client)
            await anext(closer)
            connection = _Connection(
                client,
                os.getpid(),
                {
                    name: client.register_script(source)
                    for name, source in (
                        ("save", scripts.SAVE),
                        ("restore", scripts.RESTORE),
                        ("delete", scripts.DELETE),
                        ("purge", scripts.PURGE),
                    )
                },
                closer,
            )
            connection.ready = loop.create_task(self._check_shards(connection))
            self._connections[loop] = connection
        await asyncio.shield(connection.ready)  # a caller cancelled meanwhile does not cancel the others' wait
        return connection

    async def _closer(self, loop: asyncio.AbstractEventLoop, client: Any) -> AsyncGenerator[None, None]:
        """Closes ``client`` when closed: by :meth:`cleanup`, or by ``asyncio.run`` when its
        loop ends (it closes every async generator left open), so no connection outlives its loop."""
        try:
            yield
        finally:
            if self._connections.get(loop) is not None and self._connections[loop].client is client:
                del self._connections[loop]
            await client.aclose()

    async def _run(self, name: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run the script ``name`` (EVALSHA, loading it if the server lacks it)."""
        connection = await self._connection()
        async with connection.step() as client:
            return await connection.scripts[name](keys=keys, args=args, client=client)

    def _new_client(self) -> Any:
        """A new client (its connections are made on first use): a cluster's or one server's."""
        options: dict[str, Any] = {"protocol": 3, "retry": _retry(), **self._settings}
        if self._nodes is not None:
            options["startup_nodes"] = [ClusterNode(host, port) for host, port in self._nodes]
            options.setdefault("max_connections", CLUSTER_CONNECTIONS)
            if self._url is not None:
                return RedisCluster.from_url(self._url, **options)
            return RedisCluster(**options)
        if self._url is not None:
            return aioredis.Redis.from_url(self._url, **options)
        return aioredis.Redis(**options)

    async def _check_shards(self, connection: _Connection) -> None:
        """Record the namespace's shard count, or refuse another: items go to the shard
        their key hashes to, so another count would not find them. A client that
        fails here is closed (the next operation makes a new one)."""
        try:
            async with connection.step() as client:  # a step: a cleanup meanwhile waits for it
                before: Any = await client.set(self._shards_key, self.shards, nx=True, get=True)  # one atomic step
            try:
                recorded = self.shards if before is None else int(before)
            except ValueError:
                raise StorageCorruptionError(
                    f"namespace {self.namespace!r}: its shard count ({self._shards_key!r}) is damaged: {before!r}",
                    details={"key": self._shards_key.decode()},
                ) from None
            if recorded != self.shards:
                raise ValidationError(
                    f"namespace {self.namespace!r} is split over {recorded} shards; open it with shards={recorded}"
                )
        except BaseException:
            await connection.client.aclose()
            raise

    def _shard(self, key_bytes: bytes) -> int:
        return zlib.crc32(key_bytes) % self.shards

    def _by_shard(self, key_bytes: Iterable[bytes]) -> dict[int, list[int]]:
        """The positions of the keys, grouped by the shard each key goes to."""
        groups: dict[int, list[int]] = {}
        for position, encoded in enumerate(key_bytes):
            groups.setdefault(self._shard(encoded), []).append(position)
        return groups

    async def cleanup(self) -> None:
        """Close the connection pool; the provider reconnects on next use. Commands
        already sent are answered first; an operation under way that needs another (a
        search's next chunk) fails with a StorageError saying the provider was closed.
        (A pool made in another event loop or process cannot be closed from here: it is
        dropped.)"""
        loop = asyncio.get_running_loop()
        connection = self._connections.pop(loop, None)
        if connection is not None and connection.pid == os.getpid():
            closing = loop.create_task(connection.close())  # runs to its end even if this cleanup is cancelled
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        for closing in [closing for closing in self._closing if closing.get_loop() is loop]:
            await asyncio.shield(closing)  # this close and any another cleanup began: none left open

    # -- writes --------------------------------------------------------------------------

    async def _write_in_shard(self, script: str, shard: int, saves: list[PreparedSave]) -> Any:
        """Run the write script ``script`` ("save" or "restore") on a shard's part of a batch."""
        prefix = self._prefixes[shard]
        now = now_micros()
        keys: list[bytes] = []
        args: list[Any] = [prefix, now]
        for save in saves:
            record = pack_record(*save.fields(None, now, no_surrogate_id))  # SAVE keeps a replaced item's id
            keys.append(layout.record_key(prefix, save.key_bytes))
            args += [save.key_bytes, record]
        return await self._run(script, keys, args)

    async def _save_in_shard(self, shard: int, saves: list[PreparedSave]) -> list[StorageItem[Any]]:
        stored = await self._write_in_shard("save", shard, saves)
        return [_item(record, save) for record, save in zip(stored, saves, strict=True)]

    async def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        prepared = prepare_save(key, data, content_type, expires_at, tags)
        [item] = await self._save_in_shard(self._shard(prepared.key_bytes), [prepared])
        return item

    async def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        batch = prepare_many(items, content_type, expires_at, tags)
        groups = self._by_shard(batch.key_bytes)
        saved = await asyncio.gather(
            *(self._save_in_shard(shard, [batch.save(p) for p in positions]) for shard, positions in groups.items())
        )
        items_in_order: list[Any] = [None] * len(batch.keys)
        for positions, shard_items in zip(groups.values(), saved, strict=True):
            for position, item in zip(positions, shard_items, strict=True):
                items_in_order[position] = item
        return items_in_order

    async def restore_many(self, items: Sequence[StorageItem[Any]]) -> int:
        restores = prepare_restore(items)
        groups = self._by_shard(save.key_bytes for save in restores)
        counts = await asyncio.gather(
            *(
                self._write_in_shard("restore", shard, [restores[p] for p in positions])
                for shard, positions in groups.items()
            )
        )
        return sum(counts)

    async def _delete_in_shard(
        self, shard: int, keys: list[bytes], content_type: str | None, expected: list[bytes] | None = None
    ) -> int:
        prefix = self._prefixes[shard]
        args: list[Any] = [prefix, now_micros(), content_type or ""]
        for position, key in enumerate(keys):
            args += [key, b"" if expected is None else expected[position]]
        return int(await self._run("delete", [layout.record_key(prefix, key) for key in keys], args))

    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        key_bytes = validate_key(key)
        if content_type is not None:
            validate_name(content_type, "content_type")
        return await self._delete_in_shard(self._shard(key_bytes), [key_bytes], content_type) == 1

    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        checked = list(validate_keys(keys).values())
        if content_type is not None:
            validate_name(content_type, "content_type")
        groups = self._by_shard(checked)
        counts = await asyncio.gather(
            *(
                self._delete_in_shard(shard, [checked[p] for p in positions], content_type)
                for shard, positions in groups.items()
            )
        )
        return sum(counts)

    async def delete_matching(self, query: StorageQuery | index.CompiledQuery) -> int:
        compiled = index.compile_query(query)
        limit = compiled.spec.limit
        unlimited = dataclasses.replace(compiled, spec=dataclasses.replace(compiled.spec, limit=None))
        if limit is None:  # every shard at once
            shards = range(self.shards)
            return sum(await asyncio.gather(*(self._delete_matching_in(shard, unlimited, None) for shard in shards)))
        deleted = 0
        for shard in range(self.shards):  # in turn, each up to what the limit leaves
            if deleted == limit:
                break
            deleted += await self._delete_matching_in(shard, unlimited, limit - deleted)
        return deleted

    async def _delete_matching_in(self, shard: int, compiled: index.CompiledQuery, most: int | None) -> int:
        found: dict[bytes, bytes] = {}  # a SCAN may meet a key twice
        async with contextlib.aclosing(self._matching(compiled, shard)) as chunks:
            async for chunk in chunks:
                for key, record in chunk:
                    found.setdefault(key, record)
                if most is not None and len(found) >= most:
                    break  # enough: read no further
        keys = list(found)[:most]
        if not keys:
            return 0
        return await self._delete_in_shard(shard, keys, None, [found[key] for key in keys])  # each if still the same

    async def purge_expired(self) -> int:
        """Remove the index entries of items Redis has expired (and any expired record
        it has not dropped yet); returns how many items were purged."""
        return sum(await asyncio.gather(*(self._purge_shard(prefix) for prefix in self._prefixes)))

    async def check(self, repair: bool = False) -> index.CheckReport:
        """Verify that every index entry belongs to a record that has it and every record
        is fully indexed, shard by shard (:mod:`.check`); check a store at rest. With
        ``repair``, also fix what it finds. Returns what was found.

        Raises:
            StorageConnectionError: Redis is unreachable.
        """
        connection = await self._connection()
        report = index.CheckReport()
        for prefix in self._prefixes:
            async with connection.step() as client:
                await check_shard(client, prefix, _node(client, prefix), report, repair)
        return report

    async def _purge_shard(self, prefix: bytes) -> int:
        total = 0
        while True:
            met = int(await self._run("purge", [prefix + layout.EXPIRES], [prefix, now_micros(), PURGE_BATCH]))
            total += met
            if met < PURGE_BATCH:
                return total

    # -- reads ---------------------------------------------------------------------------

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        key_bytes = validate_key(key)
        record_key = layout.record_key(self._prefixes[self._shard(key_bytes)], key_bytes)
        async with self._step() as client:
            record: Any = await client.get(record_key)  # bytes: the client never decodes
        return load_item(record, key, content_type, now_micros())

    async def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        checked = validate_keys(keys)
        wanted = None if content_type is None else validate_name(content_type, "content_type")
        names = list(checked)
        encoded = list(checked.values())
        connection = await self._connection()
        records: list[Any] = [None] * len(names)
        for shard, positions in self._by_shard(encoded).items():
            prefix = self._prefixes[shard]
            async with connection.step() as client:
                found = await client.mget([layout.record_key(prefix, encoded[p]) for p in positions])
            for position, record in zip(positions, found, strict=True):
                records[position] = record
        now = now_micros()
        items: dict[str, StorageItem[Any]] = {}
        for name, record in zip(names, records, strict=True):
            item = None if record is None else live_item(record, name, wanted, now)
            if item is not None:
                items[name] = item
        return items

    async def explain(self, query: StorageQuery | index.CompiledQuery, shard: int = 0) -> index.Plan:
        """The plan a search of ``query`` would follow now in ``shard`` (see :func:`unistore.index.plan`).

        Raises:
            ValidationError: a bad query field.
        """
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < self.shards:
            raise ValidationError(f"shard must be an int from 0 to {self.shards - 1}, got {shard!r}")
        return await self._plan(index.compile_query(query).spec, shard)

    async def _plan(self, spec: Any, shard: int) -> index.Plan:
        async with self._step() as client:
            sizes = await _Sizes.read(client, self._prefixes[shard], spec)
        return index.plan(spec, sizes, COSTS)

    async def search(self, query: StorageQuery | index.CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        compiled = index.compile_query(query)
        remaining = compiled.spec.limit
        if remaining == 0:
            return
        async with _scattered([self._search_shard(compiled, shard) for shard in range(self.shards)]) as chunks:
            async for chunk in chunks:
                for result in chunk[:remaining]:
                    yield result
                if remaining is not None:
                    remaining -= min(len(chunk), remaining)
                    if remaining == 0:
                        return

    async def _search_shard(self, compiled: index.CompiledQuery, shard: int) -> AsyncGenerator[list[Any], None]:
        """One shard's results, a chunk at a time (each shard stops at the query's limit)."""
        read = await self._reader(compiled.spec, shard)
        async with contextlib.aclosing(index.search_chunks_async(compiled, read, True, _key_name)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _matching(
        self, compiled: index.CompiledQuery, shard: int
    ) -> AsyncGenerator[list[tuple[bytes, bytes]], None]:
        read = await self._reader(compiled.spec, shard)
        async with contextlib.aclosing(index.matching_chunks_async(compiled, read, name=_key_name)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _reader(self, spec: Any, shard: int) -> Callable[[Any], Awaitable[index.Chunk]]:
        """The chunk reader of the cheapest plan for ``spec`` in ``shard``."""
        connection = await self._connection()
        prefix = self._prefixes[shard]
        plan = await self._plan(spec, shard)
        if plan.path == index.POSTINGS:
            first, *others = (layout.posting_key(prefix, kind, term) for kind, term in plan.terms)
            return _PostingReader(connection, prefix, first, others)
        if plan.path == index.KEYS:
            return _ScanReader(connection, prefix, spec.pattern)
        kind = index.CREATED if plan.path == index.CREATED_RANGE else index.EXPIRES
        return _TimeReader(connection, prefix, layout.time_key(prefix, kind), plan.low, plan.high)

    # -- maintenance (see unistore.maintenance and .check) ---------------------------------

    async def usage(self) -> dict[str, Usage]:
        """This namespace's live items and record bytes per content type, read shard
        by shard with SCAN and MGET.

        Raises:
            StorageConnectionError: Redis is unreachable.
        """
        connection = await self._connection()
        now = now_micros()
        parts = []
        for prefix in self._prefixes:
            async with connection.step() as client:
                parts.append(await shard_usage(client, prefix, _node(client, prefix), now))
        return merge(parts)

    async def namespace_exists(self) -> bool:
        """Whether the server holds any key of this namespace, asked without creating
        anything (the first operation records a namespace's shard count).

        Raises:
            StorageConnectionError: Redis is unreachable.
        """
        client = self._new_client()
        try:
            with _translated():
                return await namespace_exists(client, self._shards_key, self._prefixes)
        finally:
            await client.aclose()

    async def namespaces(self) -> list[tuple[str, int]]:
        """Every namespace on this provider's server (database, or cluster), with its
        shard count, by name; asked without creating anything.

        Raises:
            StorageConnectionError: Redis is unreachable.
        """
        client = self._new_client()
        try:
            with _translated():
                return await list_namespaces(client)
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def _scattered(streams: list[AsyncGenerator[_T, None]]) -> AsyncIterator[AsyncIterator[_T]]:
    """What every stream yields, in the order it arrives: the streams are read
    concurrently, each one step ahead at most. On leaving, every stream is stopped
    (its step in progress cancelled) and closed."""
    if len(streams) == 1:
        try:
            yield streams[0]
        finally:
            await streams[0].aclose()
        return
    pending: dict[asyncio.Future[_T], AsyncGenerator[_T, None]] = {}

    async def merged() -> AsyncGenerator[_T, None]:
        for stream in streams:
            pending[asyncio.ensure_future(anext(stream))] = stream
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for step in done:
                stream = pending.pop(step)
                try:
                    value = step.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(stream))] = stream
                yield value

    chunks = merged()
    try:
        yield chunks
    finally:
        await chunks.aclose()
        for step in pending:
            step.cancel()
        if pending:
            await asyncio.wait(pending)
        for step in pending:  # a step may have ended before its cancel (StopAsyncIteration): read it
            if not step.cancelled():
                step.exception()
        for stream in streams:
            await stream.aclose()


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


@dataclasses.dataclass
class _Connection:
    """What one event loop of one process uses: a client, its scripts, its first check
    (awaited by every caller), and the generator that closes it."""

    client: Any
    pid: int
    scripts: dict[str, Any]
    closer: AsyncGenerator[None, None]
    #: The first check (:meth:`RedisStorageProvider._check_shards`), itself a step.
    ready: asyncio.Task[None] = dataclasses.field(init=False)
    closed: bool = False
    #: Steps under way, and set when there are none (what :meth:`close` waits for).
    busy: int = 0
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @contextlib.asynccontextmanager
    async def step(self) -> AsyncIterator[Any]:
        """The client for one step of an operation (Redis errors translated); refused
        once :meth:`close` has begun. A search holds its connection from one chunk to
        the next: a chunk read on a closed client would make redis-py open a new
        connection that nothing closes.

        Raises:
            StorageError: the provider was closed (cleanup) since the operation began.
        """
        if self.closed:
            raise StorageError("the provider was closed (cleanup) during this operation; it reconnects on its next one")
        self.busy += 1
        try:
            with _translated():
                yield self.client
        finally:
            self.busy -= 1
            if not self.busy:
                self.idle.set()

    async def close(self) -> None:
        """Refuse new steps, let those under way finish (a command cut off by the close
        would be retried by redis-py on new connections of a closed client, which then
        leak), and close the client. Run as a task of its own (see cleanup()), so that a
        cancelled cleanup does not cut it short; cancelled only when its loop ends."""
        self.closed = True
        try:
            while self.busy:
                self.idle.clear()
                await self.idle.wait()
        finally:  # closed even when the wait is cancelled
            with _translated():
                await self.closer.aclose()


def _failed(task: asyncio.Task[None]) -> bool:
    """Whether a client's first check has ended without success."""
    return task.done() and (task.cancelled() or task.exception() is not None)


def _item(record: bytes, save: PreparedSave) -> StorageItem[Any]:
    """The item a save stored: its record as the script returned it (ours, with a
    replaced item's id and creation time), the data as already decoded."""
    item: StorageItem[Any] = unpack_item(record, None, None, save.loaded)  # type: ignore[assignment]
    return item


def _key_name(key: bytes) -> str:
    return key.decode(errors="replace")


class _Sizes:
    """The sizes of a shard's candidate sources, read in one round trip."""

    def __init__(self, postings: dict[tuple[int, bytes], int], keys: int, times: dict[int, int]) -> None:
        self._postings = postings
        self._keys = keys
        self._times = times

    @classmethod
    async def read(cls, client: aioredis.Redis, prefix: bytes, spec: Any) -> _Sizes:
        terms = index.query_postings(spec)
        bounds = [
            (kind, low, high)
            for kind, low, high in (
                (index.CREATED, spec.created_after, spec.created_before),
                (index.EXPIRES, spec.expires_after, spec.expires_before),
            )
            if low is not None or high is not None
        ]
        node = _node(client, prefix)
        everything = spec.pattern is None  # a SCAN then yields every record of the shard
        async with client.pipeline(transaction=False) as pipe:
            for kind, term in terms:
                pipe.scard(layout.posting_key(prefix, kind, term))
            for kind, low, high in bounds:
                pipe.zcount(layout.time_key(prefix, kind), _score(low, "-inf"), _score(high, "+inf"))
            if everything:
                pipe.zcard(layout.time_key(prefix, index.CREATED))  # every item has its creation time
            if not node:  # one server: the keyspace's size in the same round trip
                pipe.dbsize()
            replies = await pipe.execute()
        keyspace = await client.dbsize(**node) if node else replies.pop()
        # What a SCAN costs, counted in keys visited (the planner's unit): every key of
        # the database, and, when no pattern narrows what it yields, each of the shard's
        # records fetched, at what a fetch costs in visits. (A pattern is taken to yield few.)
        fetched = replies.pop() * COSTS.fetch / COSTS.scan if everything else 0
        return cls(
            dict(zip(terms, replies, strict=False)),
            keyspace + math.ceil(fetched),
            {kind: count for (kind, _, _), count in zip(bounds, replies[len(terms) :], strict=True)},
        )

    def posting(self, kind: int, term: bytes) -> int:
        return int(self._postings[kind, term])

    def keys(self, literal: bytes, most: int | None) -> int:
        return int(self._keys)  # a SCAN visits every key of the database, whatever the prefix (see read)

    def times(self, kind: int, low: int | None, high: int | None, most: int) -> int:
        return int(self._times[kind])


def _node(client: Any, prefix: bytes) -> dict[str, Any]:
    """Where a command that names no key but is about a shard goes (SCAN, DBSIZE): on a
    cluster, to the node that holds the shard's slot; on one server, nowhere special."""
    if isinstance(client, RedisCluster):  # a prefix is ASCII (layout.escape_namespace)
        return {"target_nodes": client.get_node_from_key(prefix.decode("ascii"))}
    return {}


def _score(micros: int | None, unbounded: str) -> str:
    return unbounded if micros is None else str(micros)


async def _records(client: aioredis.Redis, prefix: bytes, members: list[Any]) -> list[tuple[bytes, bytes]]:
    """The (key, record) of each member that still has a record (Redis may have expired it)."""
    if not members:
        return []
    records: list[Any] = await client.mget([layout.record_key(prefix, member) for member in members])
    return [(member, record) for member, record in zip(members, records, strict=True) if record is not None]


class _PostingReader:
    """Walks a posting set with SSCAN; narrows each page by the plan's other sets (SMISMEMBER)."""

    def __init__(self, connection: _Connection, prefix: bytes, first: bytes, others: list[bytes]) -> None:
        self._connection, self._prefix, self._first, self._others = connection, prefix, first, others

    async def __call__(self, cursor: int | None) -> index.Chunk:
        async with self._connection.step() as client:
            cursor, members = await client.sscan(self._first, cursor or 0, count=SEARCH_CHUNK)
            for other in self._others:
                flags = await client.smismember(other, members) if members else []
                members = [member for member, flag in zip(members, flags, strict=True) if flag]
            return await _records(client, self._prefix, members), cursor or None


class _ScanReader:
    """Walks the database with SCAN MATCH, the shard's prefix before the query's pattern."""

    def __init__(self, connection: _Connection, prefix: bytes, pattern: bytes | None) -> None:
        self._connection, self._prefix = connection, prefix
        self._match = layout.scan_pattern(prefix, pattern)
        self._cut = len(prefix) + len(layout.RECORD)

    async def __call__(self, cursor: Any) -> index.Chunk:
        async with self._connection.step() as client:
            cursor, keys = await scan_page(client, cursor or 0, self._match, SCAN_COUNT, _node(client, self._prefix))
            members = [key[self._cut :] for key in keys]
            return await _records(client, self._prefix, members), cursor or None


class _TimeReader:
    """Walks a time order by score, a page at a time; resumes after the last (score, rank)."""

    def __init__(self, connection: _Connection, prefix: bytes, key: bytes, low: int | None, high: int | None) -> None:
        self._connection, self._prefix, self._key = connection, prefix, key
        self._high = _score(high, "+inf")
        self._start = (_score(low, "-inf"), 0)

    async def __call__(self, position: tuple[str, int] | None) -> index.Chunk:
        low, skip = position or self._start
        async with self._connection.step() as client:
            page: list[Any] = await client.zrange(
                self._key, low, self._high, byscore=True, offset=skip, num=SEARCH_CHUNK, withscores=True
            )
            records = await _records(client, self._prefix, [member for member, _ in page])
        if len(page) < SEARCH_CHUNK:
            return records, None
        last = page[-1][1]
        at_last = sum(1 for _, score in page if score == last)
        return records, (str(int(last)), at_last + (skip if str(int(last)) == low else 0))


__all__ = ["COSTS", "RedisStorageProvider"]
