"""The Redis provider: items shared by every process and machine that reaches one Redis
server or Redis Cluster.

An item is the codec's record under one key (:mod:`.layout`), so a load is one GET
decoded by the same core as LMDB; a save is one Lua script (:mod:`.scripts`) that
writes the record and every index entry atomically, its keys declared. A namespace may
be split over ``shards`` hash-tagged shards, an item going to the shard its key hashes
to; bulk operations cost one script or MGET per shard (deletes in bounded batches), and
a search plans each shard through the index layer and reads them all at once
(:mod:`.search`). How commands reach the node that serves a shard, and what is retried,
is :mod:`.connection`'s and :mod:`.retry`'s.

One module, longer than most, because it is one idea read top to bottom: the
contract's operations over the shards, each with the script or reads it sends.
Everything else has a room of its own: settings, connections and their pool,
the slot map, retries, key names, scripts, search readers, the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from ... import index, ordering
from ...codec import (
    PreparedSave,
    decode_fields,
    live_items,
    load_item,
    no_surrogate_id,
    prepare_many,
    prepare_restore,
    prepare_save,
)
from ...core import pack_record, unpack_item
from ...errors import StorageCorruptionError, StorageError, ValidationError
from ...model import (
    StorageItem,
    StorageQuery,
    StorageResult,
    Tags,
    now_micros,
    validate_key,
    validate_keys,
    validate_wanted_type,
)
from ..base import StorageProvider
from ..maintenance import CheckReport, Namespace, Usage, merge
from . import layout, scripts
from .check import KEEPING_POLICIES, check_shard, drop_shard, eviction, namespace_exists, namespaces, shard_usage
from .connection import NO_ANSWER, Connection, NodeChanged
from .nearcache import NearCache, Tracking
from .search import COSTS, Shard, ahead, planned, reader, scattered, walker
from .settings import MAX_CONNECTIONS, SOCKET_TIMEOUT, provider_settings, url_settings

_logger = logging.getLogger(__name__)

#: Expired items one purge script removes at most, and items one delete script removes at
#: most: each runs in about a millisecond of server time (docs/benchmarks.md), so no
#: script of ours holds the server for long, however many items an operation removes.
PURGE_BATCH = 200
DELETE_BATCH = 200
#: Runs of a write script that ask for more keys (on a cluster) before it runs with the
#: shard's probe key declared instead (see ``_script``).
NEED_ROUNDS = 3
#: Seconds of writing after which a write records the namespace's shard count again.
MARKER_EVERY = 10.0


class RedisStorageProvider(StorageProvider[Any]):
    """Items in Redis, shared by every process that reaches it.

    Args:
        config: the seed's mapping: ``host``, ``port``, ``db``, ``password``,
            ``username``, ``ssl`` (and ``ssl_ca_certs``, ``ssl_certfile``,
            ``ssl_keyfile``, ``ssl_cert_reqs``), ``namespace`` and ``shards``; for
            Redis Cluster, ``cluster_nodes`` (``"host:port"`` strings or
            ``(host, port)`` pairs: the nodes to discover the cluster from)
            instead of ``host``, ``port`` and ``db``. Also:
            ``socket_timeout`` (seconds a round trip may take before the operation
            fails with StorageConnectionError; default 5, None for no limit),
            ``socket_connect_timeout`` (seconds to open a connection; default 5),
            ``max_connections`` (connections to one node at most, default 256: a
            caller past them waits for one) and ``allow_eviction`` (default False:
            a server whose ``maxmemory-policy`` evicts keys is refused at first use).
        **settings: the same, as keywords (they win over ``config``).

    Raises:
        ValidationError: an unknown setting, a bad namespace, shard count, node or number.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, **settings: Any) -> None:
        checked = provider_settings({**(config or {}), **settings})
        namespace, shards, namespace_bytes = checked.namespace, checked.shards, checked.namespace_bytes
        self.namespace = namespace
        self.shards = shards
        self.allow_eviction = checked.allow_eviction
        self._nodes = checked.nodes
        self._settings = checked.connection
        self._shards = [
            Shard(number, prefix, layout.key_slot(prefix), layout.shard_keys(prefix)[0])
            for number, prefix in enumerate(layout.shard_prefix(namespace_bytes, n, shards) for n in range(shards))
        ]
        self._shards_key = layout.shards_key(namespace_bytes)
        #: The scripts' first argument: on a cluster every key must be declared (see .scripts).
        self._strict = b"1" if self._settings.cluster else b"0"
        self._shards_slot = layout.key_slot(self._shards_key)
        #: By the event loop and process using it (a forked child's copy of its parent's is never used).
        self._connections: dict[tuple[asyncio.AbstractEventLoop, int], Connection] = {}
        self._closers: dict[Connection, AsyncGenerator[None, None]] = {}
        #: The closes cleanup() has begun and that have not ended (any cleanup of their loop waits for them).
        self._closing: set[asyncio.Task[None]] = set()
        #: The near cache's bounds (items 0: none; see .nearcache). It lives on the connection
        #: of each event loop and process (a forked child starts its own, empty).
        self.near_cache, self.near_cache_bytes = checked.near_cache, checked.near_cache_bytes

    @classmethod
    def from_url(cls, url: str, **settings: Any) -> RedisStorageProvider:
        """A provider for ``redis://[user:password@]host:port/db?namespace=x&shards=N``
        (``rediss://`` for TLS), or for the Redis Cluster that the nodes of
        ``redis+cluster://[user:password@]host:port,host:port,...?namespace=x&shards=N``
        belong to (``rediss+cluster://`` for TLS). The provider's settings
        (``socket_timeout``, ``max_connections``, ``allow_eviction``) are query
        parameters too; the others go to redis-py's connections.

        Raises:
            ValidationError: a malformed URL or setting.
        """
        return cls(**url_settings(url, settings))

    def __repr__(self) -> str:
        if self._nodes is not None:
            where = ",".join(f"{host}:{port}" for host, port in self._nodes)
            return f"RedisStorageProvider(cluster={where!r}, namespace={self.namespace!r}, shards={self.shards})"
        host = self._settings.nodes[0][0]
        return f"RedisStorageProvider(host={host!r}, namespace={self.namespace!r}, shards={self.shards})"

    # -- the connection --------------------------------------------------------------------

    async def _connection(self, maintenance: bool = False) -> Connection:
        """The connection of this event loop and process (a fork or another loop gets its
        own), made once however many tasks ask for it at once, after its first check.

        Raises:
            ValidationError: the namespace is split over another number of shards.
            StorageError: the server evicts keys (unless ``allow_eviction``; maintenance
                runs all the same, to report what was lost).
            StorageConnectionError: Redis is unreachable.
        """
        loop = asyncio.get_running_loop()
        key = (loop, os.getpid())
        connection = self._connections.get(key)
        if connection is None or _failed(connection.ready):
            if connection is not None:  # a failed one (closed by its check): let it go
                await self._closers.pop(connection).aclose()
            connection = Connection(self._settings)
            closer = self._closer(key, connection)
            await anext(closer)
            self._closers[connection] = closer
            connection.ready = loop.create_task(self._first_check(connection))
            self._connections[key] = connection
        assert connection.ready is not None
        checked: _Checked = await asyncio.shield(connection.ready)  # one caller cancelled: not the rest
        if checked.damaged is not None and not maintenance:  # (check reports it, and a repair rewrites it)
            async with connection.step():
                checked.damaged = await self._read_count(connection)  # read again: repaired since?
            if checked.damaged is not None:
                raise checked.damaged
        evicting = checked.evicting
        if evicting and not maintenance and not self.allow_eviction:
            where = ", ".join(f"{node} has maxmemory-policy {policy}" for node, policy in evicting)
            raise StorageError(
                f"Redis may evict keys ({where}): evicted records and index entries are lost without a trace. "
                "Set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, or your service's "
                "setting), or pass allow_eviction=True to accept the loss"
            )
        return connection

    async def _closer(
        self, key: tuple[asyncio.AbstractEventLoop, int], connection: Connection
    ) -> AsyncGenerator[None, None]:
        """Closes ``connection`` when closed: by :meth:`cleanup`, or by ``asyncio.run`` when its
        loop ends (it closes every async generator left open), so no connection outlives its loop."""
        try:
            yield
        finally:
            if self._connections.get(key) is connection:
                del self._connections[key]
            self._closers.pop(connection, None)
            tracking, connection.near = connection.near, None
            if tracking is not None:  # (its near cache, with it)
                await tracking.close()
            await connection.close()

    async def _first_check(self, connection: Connection) -> _Checked:
        """A new connection's first check, which writes nothing: the cluster's slot map,
        the namespace's shard count (another is refused: items go to the shard their key
        hashes to, so another count would not find them; a damaged one is kept for
        ``check`` to report), and the maxmemory policy of every node. A connection that
        fails here is closed (the next operation makes a new one)."""
        try:
            async with connection.step():
                if connection.topology.cluster:
                    await connection.refresh()
                damaged = await self._read_count(connection)
                found = await eviction(connection)
        except BaseException:
            await connection.close()
            raise
        for node, policy, _ in found:
            if policy is None:  # an ACL user without INFO: say so, once per connection
                _logger.warning("could not read the maxmemory-policy of Redis at %s: make sure it is noeviction", node)
        evicting = [
            (node, policy) for node, policy, _ in found if policy is not None and policy not in KEEPING_POLICIES
        ]
        return _Checked(evicting, damaged)

    async def _read_count(self, connection: Connection) -> StorageCorruptionError | None:
        """The namespace's shard count, read: None if it is ours or none is recorded, the
        error if it is damaged.

        Raises:
            ValidationError: it is another count.
        """
        try:
            recorded = await connection.call(self._shards_slot, "GET", self._shards_key)
        except StorageError as exc:
            if not str(exc.__cause__).startswith("WRONGTYPE"):
                raise
            recorded = b"(not a string)"
        return self._count_damage(recorded)

    def _count_damage(self, recorded: bytes | None, key: bytes | None = None) -> StorageCorruptionError | None:
        """What a recorded shard count (``key``'s; the namespace's by default) says: None if it
        is ours or there is none, the error if it is not a count.

        Raises:
            ValidationError: it is another count.
        """
        key = self._shards_key if key is None else key
        if recorded is None:
            return None
        if not recorded.isdigit():
            return StorageCorruptionError(
                f"namespace {self.namespace!r}: its shard count ({key!r}) is damaged: {recorded!r}; "
                "`unistore check --repair` writes it again",
                details={"key": key.decode()},
            )
        count = int(recorded)
        if count != self.shards:
            raise ValidationError(
                f"namespace {self.namespace!r} is split over {count} shards; open it with shards={count}"
            )
        return None

    async def _record_count(self, connection: Connection) -> None:
        """Record the namespace's shard count if none is (it may have been lost: an empty
        restart), refusing another; the shard markers written next rely on it. Done again
        after a connection failure and every :data:`MARKER_EVERY` seconds of writing, so a
        count lost on a node the provider never talks to otherwise comes back."""
        recorded = await connection.call(self._shards_slot, "SET", self._shards_key, self.shards, "NX", "GET")
        damaged = self._count_damage(recorded)
        if damaged is not None:
            raise damaged
        connection.counted = connection.failures
        connection.counted_at = asyncio.get_running_loop().time()

    def _shard(self, key_bytes: bytes) -> Shard:
        return self._shards[zlib.crc32(key_bytes) % self.shards]

    def _by_shard(self, key_bytes: Iterable[bytes]) -> dict[Shard, list[int]]:
        """The positions of the keys, grouped by the shard each key goes to."""
        groups: dict[Shard, list[int]] = {}
        for position, encoded in enumerate(key_bytes):
            groups.setdefault(self._shard(encoded), []).append(position)
        return groups

    async def cleanup(self) -> None:
        """Close the connections; the provider reconnects on next use. Commands already
        sent are answered first; an operation under way that needs another (a search's
        next chunk) fails with a StorageError saying the provider was closed. (Connections
        made in another event loop or process cannot be closed from here: they are dropped.)"""
        loop = asyncio.get_running_loop()
        connection = self._connections.pop((loop, os.getpid()), None)
        if connection is not None:
            closing = loop.create_task(self._closers.pop(connection).aclose())
            self._closing.add(closing)  # runs to its end even if this cleanup is cancelled
            closing.add_done_callback(self._closing.discard)
        for closing in [closing for closing in self._closing if closing.get_loop() is loop]:
            await asyncio.shield(closing)  # this close and any another cleanup began: none left open

    # -- writes --------------------------------------------------------------------------

    async def _write(self, script: scripts.Script, shard: Shard, saves: list[PreparedSave]) -> list[bytes]:
        """Run the write script ``script`` (SAVE or RESTORE) on a shard's part of a batch;
        the records as written, with what the script kept of the records they replaced."""
        connection = await self._connection()
        prefix = shard.prefix
        now = now_micros()
        keys: list[bytes] = list(layout.shard_keys(prefix))
        args: list[Any] = [self._strict, prefix, now, self.shards, b"0", len(saves)]
        records = []
        for save in saves:
            fields = save.fields(None, now, no_surrogate_id)  # SAVE keeps a replaced item's id
            record = pack_record(*fields)
            postings = [layout.posting_key(prefix, kind, term) for kind, term in index.postings(fields)]
            keys.append(layout.record_key(prefix, save.key_bytes))
            keys += postings
            args += [save.key_bytes, record, len(postings)]
            records.append(record)
        stale = asyncio.get_running_loop().time() - connection.counted_at > MARKER_EVERY
        if stale or connection.counted != connection.failures:  # the first write, one after a failure, or in a while
            await self._record_count(connection)
            args[4] = b"1"
        with self._changing(connection, prefix, [save.key_bytes for save in saves]):
            reply = await self._script(connection, shard, script, keys, args)
        return [
            record[:8] + patch + record[40:] if patch else record for record, patch in zip(records, reply, strict=True)
        ]

    async def _script(
        self, connection: Connection, shard: Shard, script: scripts.Script, keys: list[bytes], args: list[Any]
    ) -> list[Any]:
        """Run ``script`` until it answers OK.

        On a cluster, a run that meets keys it was not given (``NEED``: an upsert's old tags)
        runs again with them declared. Writers that keep changing the same items' tags can
        make that go on, so after :data:`NEED_ROUNDS` of them the script runs once more with
        the shard's probe key declared: a key that never exists, so Redis holds the script
        back while the slot migrates (a migrating slot's multi-key command with a key missing
        is refused, ``TRYAGAIN``) and the script may then touch the keys it learns, which
        are in the same slot and stay there while it runs. A missing shard marker is
        recorded first (``MARKER``).
        """
        declared = list(keys)
        needs = 0
        while True:
            reply = await connection.script(shard.slot, script, declared, args)
            status = reply[0]
            if status == b"OK":
                return list(reply[1:])
            if status == b"NEED":
                declared += reply[1:]
                needs += 1
                if needs == NEED_ROUNDS:
                    args[0] = b"0"  # (see .scripts: STRICT)
                    declared.append(shard.prefix + layout.PROBE)
            elif status == b"MARKER":  # (once: the next run is told the count was just recorded)
                await self._record_count(connection)
                args[4] = b"1"
            else:  # b"SHARDS": the shard's marker names another count
                damaged = self._count_damage(reply[1], shard.marker)
                raise damaged or StorageCorruptionError(  # ("02": a count, but not as we write it)
                    f"namespace {self.namespace!r}: the shard marker {shard.marker!r} is damaged: {reply[1]!r}",
                    details={"key": shard.marker.decode()},
                )

    async def save(
        self, key: str, data: Any, content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> StorageItem[Any]:
        prepared = prepare_save(key, data, content_type, expires_at, tags)
        [record] = await self._write(scripts.SAVE, self._shard(prepared.key_bytes), [prepared])
        return _item(record, prepared)

    async def save_many(
        self, items: Mapping[str, Any], content_type: str, expires_at: datetime | None = None, tags: Tags | None = None
    ) -> list[StorageItem[Any]]:
        batch = prepare_many(items, content_type, expires_at, tags)
        groups = self._by_shard(batch.key_bytes)
        written = await asyncio.gather(
            *(
                self._write(scripts.SAVE, shard, [batch.save(p) for p in positions])
                for shard, positions in groups.items()
            )
        )
        items_in_order: list[Any] = [None] * len(batch.keys)
        for positions, records in zip(groups.values(), written, strict=True):
            for position, record in zip(positions, records, strict=True):
                items_in_order[position] = _item(record, batch.save(position))
        return items_in_order

    async def restore_many(self, items: Sequence[StorageItem[Any]]) -> int:
        restores = prepare_restore(items)
        groups = self._by_shard(save.key_bytes for save in restores)
        written = await asyncio.gather(
            *(
                self._write(scripts.RESTORE, shard, [restores[p] for p in positions])
                for shard, positions in groups.items()
            )
        )
        return sum(map(len, written))

    async def _delete_in_shard(
        self,
        shard: Shard,
        members: list[bytes],
        content_type: bytes | None,
        stamps: list[bytes] | None = None,
        postings: list[list[bytes]] | None = None,
    ) -> int:
        """Delete ``members`` of ``shard`` (each only if live, of ``content_type`` and, given
        ``stamps``, still the record stamped so), :data:`DELETE_BATCH` at a time; how many
        live items were removed. ``postings``: the posting sets each member is expected in
        (each batch declares its own members' only: the script's work follows the batch)."""
        connection = await self._connection()
        prefix = shard.prefix
        orders = list(layout.shard_keys(prefix)[1:])  # (see scripts.DELETE: KEYS)
        typed = [] if content_type is None else [layout.posting_key(prefix, index.CONTENT_TYPE, content_type)]
        removed = 0
        for start in range(0, len(members), DELETE_BATCH):
            batch = members[start : start + DELETE_BATCH]
            known = set(typed)
            if postings is not None:
                known.update(key for keys in postings[start : start + DELETE_BATCH] for key in keys)
            keys = [*orders, prefix + layout.TOKEN + os.urandom(8).hex().encode()]
            keys += [layout.record_key(prefix, member) for member in batch]
            args: list[Any] = [self._strict, prefix, now_micros(), content_type or b"", len(batch)]
            for position, member in enumerate(batch):
                args += [member, b"" if stamps is None else stamps[start + position]]
            args.append(scripts.TOKEN_TTL_MS)
            with self._changing(connection, prefix, batch):
                [count] = await self._script(connection, shard, scripts.DELETE, keys + sorted(known), args)
            removed += int(count)
        return removed

    async def delete(self, key: str, *, content_type: str | None = None) -> bool:
        key_bytes = validate_key(key)
        wanted = validate_wanted_type(content_type)
        return await self._delete_in_shard(self._shard(key_bytes), [key_bytes], wanted) == 1

    async def delete_many(self, keys: Iterable[str], *, content_type: str | None = None) -> int:
        """Remove the items under ``keys``; how many live ones there were. On Redis each
        shard's part is removed :data:`DELETE_BATCH` keys per script (each batch atomic),
        so that no script holds the server for long."""
        checked = list(validate_keys(keys).values())
        wanted = validate_wanted_type(content_type)
        groups = self._by_shard(checked)
        counts = await asyncio.gather(
            *(
                self._delete_in_shard(shard, [checked[p] for p in positions], wanted)
                for shard, positions in groups.items()
            )
        )
        return sum(counts)

    async def delete_matching(self, query: StorageQuery | index.CompiledQuery) -> int:
        """Remove every live item ``query`` matches (up to its limit); how many. The matches
        are found first, then removed :data:`DELETE_BATCH` per script, each only if it still
        holds the record that matched."""
        compiled = index.compile_query(query)
        limit = compiled.spec.limit
        unlimited = compiled.limited(None)
        if limit is None:  # every shard at once
            return sum(
                await asyncio.gather(*(self._delete_matching_in(shard, unlimited, None) for shard in self._shards))
            )
        deleted = 0
        for shard in self._shards:  # in turn, each up to what the limit leaves
            if deleted == limit:
                break
            deleted += await self._delete_matching_in(shard, unlimited, limit - deleted)
        return deleted

    async def _delete_matching_in(self, shard: Shard, compiled: index.CompiledQuery, most: int | None) -> int:
        found = await self._matches_in(shard, compiled, most)
        members = list(found)[:most]
        if not members:
            return 0
        stamps: list[bytes] = []
        postings: list[list[bytes]] = []
        for member in members:
            record = found[member]
            stamps.append(record[8:56])  # ids and times: a save since changes them
            fields = decode_fields(record, _key_name(member))
            postings.append([layout.posting_key(shard.prefix, kind, term) for kind, term in index.postings(fields)])
        return await self._delete_in_shard(shard, members, None, stamps, postings)

    async def purge_expired(self) -> int:
        """Remove the index entries of items Redis has expired (and any expired record it
        has not dropped yet), :data:`PURGE_BATCH` per script; returns how many items were purged."""
        return sum(await asyncio.gather(*(self._purge_shard(shard) for shard in self._shards)))

    async def _purge_shard(self, shard: Shard) -> int:
        connection = await self._connection()
        prefix = shard.prefix
        orders = list(layout.shard_keys(prefix)[1:])  # (see scripts.PURGE: KEYS)
        expires = layout.time_key(prefix, index.EXPIRES)
        total = 0
        while True:
            now = now_micros()
            due = await connection.call(shard.slot, "ZRANGEBYSCORE", expires, "-inf", now, "LIMIT", 0, PURGE_BATCH)
            if not due:
                return total
            keys = [*orders, prefix + layout.TOKEN + os.urandom(8).hex().encode()]
            keys += [layout.record_key(prefix, member) for member in due]
            [count] = await self._script(
                connection,
                shard,
                scripts.PURGE,
                keys,
                [self._strict, prefix, now, len(due), *due, scripts.TOKEN_TTL_MS],
            )
            total += int(count)
            if len(due) < PURGE_BATCH:
                return total

    # -- reads ---------------------------------------------------------------------------

    async def _tracking(self, connection: Connection) -> Tracking | None:
        """The near cache of this event loop and process (the provider has one), ready for a
        load: started by the first, which waits for the first attempt to set tracking up (a
        round trip or two), and given the event loop's turns when they are due (see
        :meth:`.nearcache.NearCache.let_pushes_in`); None on a connection a cleanup closed
        (the load then fails, saying so)."""
        tracking: Tracking | None = connection.near  # (closed with its connection, by the connection's closer)
        if tracking is None or not tracking.first.done():
            if connection.closed:
                return None
            if tracking is None:
                cache = NearCache(self.near_cache, self.near_cache_bytes, len(self._shards), self.namespace)
                shards = [(shard.number, shard.prefix, shard.slot) for shard in self._shards]
                tracking = connection.near = Tracking(connection, shards, cache)
            await asyncio.shield(tracking.first)
        if time.monotonic() >= tracking.cache.due:
            await tracking.cache.let_pushes_in()
        return tracking

    @contextlib.contextmanager
    def _changing(self, connection: Connection, prefix: bytes, members: list[bytes]) -> Iterator[None]:
        """Around a write of ``members`` of the shard of ``prefix``: their near-cache entries
        dropped before it and after it (this process sees its own writes at once, before
        Redis's invalidation arrives), and their fills in flight keep nothing."""
        tracking: Tracking | None = connection.near
        if tracking is None:
            yield
            return
        keys = [layout.record_key(prefix, member) for member in members]
        tracking.cache.invalidate(keys)
        try:
            yield
        finally:
            tracking.cache.invalidate(keys)

    async def load(self, key: str, *, content_type: str | None = None) -> StorageItem[Any]:
        key_bytes = validate_key(key)
        shard = self._shard(key_bytes)
        connection = await self._connection()
        record_key = layout.record_key(shard.prefix, key_bytes)
        tracking = await self._tracking(connection) if self.near_cache else None
        if tracking is None:
            record: Any = await connection.call(shard.slot, "GET", record_key)
            return load_item(record, key, content_type, now_micros())
        now = now_micros()
        record = tracking.cache.get(record_key, shard.number, now)
        if record is None:
            [record] = await self._records(connection, tracking, shard, [record_key], "GET")
        return load_item(record, key, content_type, now)

    async def load_many(self, keys: Iterable[str], *, content_type: str | None = None) -> dict[str, StorageItem[Any]]:
        checked = validate_keys(keys)
        wanted = validate_wanted_type(content_type)
        names = list(checked)
        encoded = list(checked.values())
        connection = await self._connection()
        tracking = await self._tracking(connection) if self.near_cache else None
        now = now_micros()
        records: list[Any] = [None] * len(names)
        if tracking is not None:
            for position, key_bytes in enumerate(encoded):
                shard = self._shard(key_bytes)
                records[position] = tracking.cache.get(layout.record_key(shard.prefix, key_bytes), shard.number, now)
        missed = [position for position, record in enumerate(records) if record is None]
        groups = self._by_shard(encoded[position] for position in missed)
        found = await asyncio.gather(
            *(
                self._records(
                    connection,
                    tracking,
                    shard,
                    [layout.record_key(shard.prefix, encoded[missed[p]]) for p in positions],
                    "MGET",
                )
                for shard, positions in groups.items()
            )
        )
        for positions, shard_records in zip(groups.values(), found, strict=True):
            for position, record in zip(positions, shard_records, strict=True):
                records[missed[position]] = record
        return live_items(names, records, wanted, now)

    async def _records(
        self, connection: Connection, tracking: Tracking | None, shard: Shard, record_keys: list[bytes], read: str
    ) -> list[Any]:
        """The records under ``record_keys`` (of ``shard``), by ``read``: ``GET`` of one
        (which reports a key of another type, as a load does) or ``MGET``. With a near
        cache, read from the node that tracks the shard and kept unless something changed
        them meanwhile (see :class:`.nearcache.NearCache`); read where the shard is now,
        and not kept, when that node does not answer for the shard (a MOVED has it
        tracked anew)."""
        command = (read, *record_keys)
        if tracking is None:
            return _replies(read, await connection.call(shard.slot, *command))
        cache = tracking.cache
        fills = [cache.begin(record_key, shard.number) for record_key in record_keys]
        records: list[Any] | None = None
        try:
            try:
                reply = await connection.read_on(tracking.node(shard.number), command)
            except NodeChanged:
                tracking.moved(shard.number)
            else:
                if reply is not NO_ANSWER:
                    records = _replies(read, reply)
                    return records
            return _replies(read, await connection.call(shard.slot, *command))
        finally:
            for position, fill in enumerate(fills):
                cache.end(fill, None if records is None else records[position])

    async def explain(self, query: StorageQuery | index.CompiledQuery) -> index.Plan:
        """The plan a search of ``query`` would follow now in the first shard (each shard
        plans alike from its own sizes; :meth:`explain_shard` shows another's).

        Raises:
            ValidationError: a bad query field.
        """
        return await self.explain_shard(query, 0)

    async def explain_shard(self, query: StorageQuery | index.CompiledQuery, shard: int) -> index.Plan:
        """The plan a search of ``query`` would follow now in ``shard`` (a :class:`~unistore.index.Plan`).

        Raises:
            ValidationError: a bad query field.
        """
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < self.shards:
            raise ValidationError(f"shard must be an int from 0 to {self.shards - 1}, got {shard!r}")
        spec = index.compile_query(query).spec
        return await planned(await self._connection(), self._shards[shard], spec)

    async def search(self, query: StorageQuery | index.CompiledQuery) -> AsyncIterator[StorageResult[Any]]:
        compiled = index.compile_query(query)
        remaining = compiled.spec.limit
        if remaining == 0:
            return
        order = compiled.spec.order
        if order is not None:  # each shard's stream in the order, merged
            async with ahead([self._ordered_in(compiled, shard) for shard in self._shards]) as streams:
                async for result in ordering.merge(streams, order, remaining):  # (it holds nothing but them)
                    yield result
            return
        async with scattered([self._search_shard(compiled, shard) for shard in self._shards]) as chunks:
            async for chunk in chunks:
                for result in chunk[:remaining]:
                    yield result
                if remaining is not None:
                    remaining -= min(len(chunk), remaining)
                    if remaining == 0:
                        return

    async def _ordered_in(
        self, compiled: index.CompiledQuery, shard: Shard
    ) -> AsyncGenerator[StorageResult[Any], None]:
        """One shard's results of an ordered query, in its order, from its position on: its
        order walked until the limit is reached, where the plan says that reads less than
        ordering every match by its header (:func:`unistore.ordering.pick`)."""
        connection = await self._connection()
        plan = await planned(connection, shard, compiled.spec)
        every = ordering.every_match(compiled)
        if plan.walk is None:  # (read on the plan's path: it is planned once)
            found = await self._matches_in(shard, every, None, plan)
            for result in ordering.pick(compiled, found.items(), _key_name):
                yield result
            return
        wanted = compiled.spec.limit
        assert wanted is not None  # (a walk is planned for a query with a limit only)
        given = 0
        read = walker(connection, shard, compiled, plan)
        async with contextlib.aclosing(index.matching_chunks_async(every, read, _key_name)) as chunks:
            async for hits in chunks:  # a chunk's matches, in the walk's order: ordered by their headers
                for result in ordering.pick(compiled.limited(wanted - given), hits, _key_name):
                    yield result
                    given += 1
                if given == wanted:
                    return

    async def _search_shard(self, compiled: index.CompiledQuery, shard: Shard) -> AsyncGenerator[list[Any], None]:
        """One shard's results, a chunk at a time (each shard stops at the query's limit;
        what a restarted walk meets twice is dropped)."""
        read = await reader(await self._connection(), shard, compiled.spec, COSTS)
        async with contextlib.aclosing(index.search_chunks_async(compiled, read, True, _key_name)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def count(self, query: StorageQuery | index.CompiledQuery) -> int:
        compiled = ordering.unordered(query)
        limit = compiled.spec.limit
        unlimited = compiled.limited(None)
        shards = await asyncio.gather(*(self._matches_in(shard, unlimited, limit) for shard in self._shards))
        found = sum(map(len, shards))
        return found if limit is None else min(found, limit)

    async def _matches_in(
        self, shard: Shard, compiled: index.CompiledQuery, most: int | None, plan: index.Plan | None = None
    ) -> dict[bytes, bytes]:
        """The ``(key, record)`` of each item of one shard that ``compiled`` matches by its
        header, each key once (a SCAN may meet a key twice: the first is kept), read no
        further than ``most`` items (None: all), on ``plan``'s path (None: the plan now)."""
        found: dict[bytes, bytes] = {}
        async with contextlib.aclosing(self._matching(compiled, shard, plan)) as chunks:
            async for chunk in chunks:
                for key, record in chunk:
                    found.setdefault(key, record)
                if most is not None and len(found) >= most:
                    break
        return found

    async def _matching(
        self, compiled: index.CompiledQuery, shard: Shard, plan: index.Plan | None = None
    ) -> AsyncGenerator[list[tuple[bytes, bytes]], None]:
        read = await reader(await self._connection(), shard, compiled.spec, COSTS, plan)
        async with contextlib.aclosing(index.matching_chunks_async(compiled, read, name=_key_name)) as chunks:
            async for chunk in chunks:
                yield chunk

    # -- maintenance (see unistore.maintenance and .check) ---------------------------------

    async def check(self, repair: bool = False) -> CheckReport:
        """Verify that every index entry belongs to a record that has it and every record
        is fully indexed, shard by shard (:mod:`.check`), and report what the server says
        of eviction; check a store at rest. With ``repair``, also fix what it finds (each
        deletion confirmed first). Returns what was found.

        Raises:
            StorageConnectionError: Redis is unreachable.
        """
        connection = await self._connection(maintenance=True)
        report = CheckReport()
        now = now_micros()
        async with connection.step():
            for node, policy, evicted in await eviction(connection):
                if policy is not None and policy not in KEEPING_POLICIES:
                    report.problems.append(
                        f"{node} has maxmemory-policy {policy}: it may evict records and index entries "
                        "(set noeviction; see docs/operations.md)"
                    )
                if evicted:
                    report.problems.append(f"{node} has evicted {evicted} keys since it started (INFO evicted_keys)")
            damaged = await self._read_count(connection)
            if damaged is not None:
                report.problems.append(str(damaged))
                if repair:  # the count this provider was opened with (another was refused)
                    await connection.call(self._shards_slot, "SET", self._shards_key, self.shards)
            for shard in self._shards:
                await check_shard(connection, shard, self.shards, report, now, repair)
        return report

    async def usage(self) -> dict[str, Usage]:
        """This namespace's live items and record bytes per content type, read shard
        by shard with SCAN and MGET.

        Raises:
            StorageConnectionError: Redis is unreachable.
        """
        connection = await self._connection(maintenance=True)
        now = now_micros()
        async with connection.step():
            return merge([await shard_usage(connection, shard, now) for shard in self._shards])

    async def drop_namespace(self) -> int:
        """Remove this namespace from the server, shard by shard (each shard's keys found with a
        SCAN on the node that serves it, then UNLINKed in batches), its shard count last; how
        many records there were.

        Raises:
            StorageConnectionError: Redis is unreachable.
        """
        connection = await self._connection(maintenance=True)
        dropped = 0
        tracking: Tracking | None = connection.near
        async with connection.step():
            for shard in self._shards:
                if tracking is not None:  # (this process sees the namespace gone at once)
                    tracking.cache.clear()
                dropped += await drop_shard(connection, shard)
            await connection.call(self._shards_slot, "UNLINK", self._shards_key)
        connection.counted = -1  # the next write records the shard count again
        return dropped

    async def namespace_exists(self) -> bool:
        """Whether the server holds any key of this namespace, asked without writing anything
        (on connections of its own, closed before it returns: it is asked of providers that
        are then dropped).

        Raises:
            StorageConnectionError: Redis is unreachable.
        """
        async with self._asking() as connection:
            return await namespace_exists(connection, self._shards_key, self._shards)

    async def namespaces(self) -> list[Namespace]:
        """Every namespace on this provider's server (database, or cluster), with its
        shard count (its setting ``shards``), by name; asked as :meth:`namespace_exists` is.

        Raises:
            StorageConnectionError: Redis is unreachable.
        """
        async with self._asking() as connection:
            return await namespaces(connection)

    async def backup(self, dest: str | os.PathLike[str], *, compact: bool = False) -> None:
        """Refused: a Redis server is backed up with its own persistence.

        Raises:
            StorageError: always.
        """
        raise StorageError(
            "backup: Redis is backed up with its own persistence (an RDB snapshot from BGSAVE, "
            "or the AOF), not by unistore"
        )

    @contextlib.asynccontextmanager
    async def _asking(self) -> AsyncIterator[Connection]:
        """A connection for one question, closed once it is answered."""
        connection = Connection(self._settings)
        try:
            async with connection.step():
                await connection.refresh()
                yield connection
        finally:
            await connection.close()


@dataclasses.dataclass
class _Checked:
    """What a connection's first check found: the nodes whose maxmemory policy evicts keys,
    and the damage of the namespace's shard count, if any (read again until repaired)."""

    evicting: list[tuple[str, str]]
    damaged: StorageCorruptionError | None


def _replies(read: str, reply: Any) -> list[Any]:
    """A read's replies as a list: the one of a ``GET``, those of an ``MGET``."""
    return [reply] if read == "GET" else list(reply)


def _failed(task: asyncio.Task[Any] | None) -> bool:
    """Whether a connection's first check has ended without success."""
    return task is None or (task.done() and (task.cancelled() or task.exception() is not None))


def _item(record: bytes, save: PreparedSave) -> StorageItem[Any]:
    """The item a save stored (its record as written), the data as already decoded."""
    item: StorageItem[Any] = unpack_item(record, None, None, save.loaded)  # type: ignore[assignment]
    return item


def _key_name(key: bytes) -> str:
    return key.decode(errors="replace")


__all__ = ["COSTS", "DELETE_BATCH", "MAX_CONNECTIONS", "PURGE_BATCH", "SOCKET_TIMEOUT", "RedisStorageProvider"]
