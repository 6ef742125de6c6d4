"""The near cache: records recently loaded from Redis, kept in this process's memory and
dropped the moment Redis says another client changed them.

Redis tells by *server-assisted client-side caching* in broadcast mode: a connection of
our own per node (:class:`Tracker`) asks ``CLIENT TRACKING ON BCAST PREFIX`` for the
record keys of the namespace's shards that node serves, and the server pushes the name of
every such key a write touches (RESP3 pushes, on that same connection: one socket to watch,
in order with the replies to our heartbeats). Redis queues a write's invalidations before
it answers the writer, so an entry is stale at most for one network delivery.

What keeps the cache true (:class:`NearCache`):

- **Fill tokens.** A load that misses marks its key before its GET; an invalidation of
  that key meanwhile (or one of our own writes, or a clear) means the reply is returned
  but not kept. A late reply never replaces what a newer one put.
- **Epochs.** Whenever tracking is not known to be whole (the connection is not up yet,
  it was lost, a heartbeat is late, the node stopped serving a shard), the cache is
  emptied and bypassed, and fills begun before are not kept.
- **Expiry** is checked on every hit (Redis pushes an expired key's invalidation only
  when it deletes it, possibly much later).
- **Bounds**: at most ``items`` entries and ``max_bytes`` bytes, least recently used first out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from hiredis import pack_command
from redis.exceptions import RedisError

from ..._coretypes import FLAG_EXPIRES, HEADER_SIZE, read_header
from ...metrics import MetricsManager
from .connection import Settings
from .topology import Address

_logger = logging.getLogger(__name__)

#: Seconds between two heartbeats on a tracking connection.
HEARTBEAT = 0.5
#: Seconds without a word from the tracking connection after which it is taken for lost
#: (its entries dropped and bypassed until it is back): a hit is served only within it.
LEASE = 2.0
#: Seconds between two attempts to bring a lost tracking connection back.
RETRY = 0.2

#: What an entry costs beyond its key and record (the dict slot, the tuple, the ints), in bytes.
ENTRY_OVERHEAD = 200


@dataclass(frozen=True)
class Fill:
    """A load's claim on a key, taken before its GET (see :meth:`NearCache.begin`)."""

    key: bytes
    seq: int
    epoch: int


class NearCache:
    """Records by their Redis key, least recently used first, with the fill protocol that
    keeps out a reply an invalidation overtook. Not thread-safe: one event loop's."""

    def __init__(self, items: int, max_bytes: int, namespace: str = "default") -> None:
        self.items, self.max_bytes = items, max_bytes
        self._entries: collections.OrderedDict[bytes, tuple[bytes, int | None, int]] = collections.OrderedDict()
        self.size = 0  # bytes held, as ENTRY_OVERHEAD counts them
        self._seq = 0
        self._epoch = 0
        #: Keys with fills in flight: how many, and the seq of their last invalidation.
        self._inflight: dict[bytes, list[int]] = {}
        #: Whether tracking is whole: only then are entries served and kept.
        self.up = False
        metrics = MetricsManager.get_instance()
        #: Loads served from memory, loads that went to Redis, entries dropped because Redis
        #: (or this process's own write) changed them, entries dropped for room; items held.
        self.hits = metrics.bind_counter("storage_near_cache_hits", namespace=namespace)
        self.misses = metrics.bind_counter("storage_near_cache_misses", namespace=namespace)
        self.invalidations = metrics.bind_counter("storage_near_cache_invalidations", namespace=namespace)
        self.evictions = metrics.bind_counter("storage_near_cache_evictions", namespace=namespace)
        self._held = metrics.bind_gauge("storage_near_cache_items", namespace=namespace)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: int) -> bytes | None:
        """The record kept under ``key`` if it is still live at ``now`` (µs), else None."""
        entry = self._entries.get(key) if self.up else None
        if entry is None:
            self.misses.inc()
            return None
        record, expires, _ = entry
        if expires is not None and expires <= now:
            self._drop(key)
            self.misses.inc()
            return None
        self._entries.move_to_end(key)
        self.hits.inc()
        return record

    def begin(self, key: bytes) -> Fill:
        """Claim ``key`` before reading it from Redis (see :meth:`end`)."""
        mark = self._inflight.get(key)
        if mark is None:
            self._inflight[key] = [1, -1]
        else:
            mark[0] += 1
        return Fill(key, self._seq, self._epoch)

    def end(self, fill: Fill, record: bytes | None) -> None:
        """The read ``fill`` claimed is over (``record``: what it read, None: nothing or a
        failure): keep it unless tracking was not whole, or the key changed, meanwhile."""
        key = fill.key
        mark = self._inflight[key]
        kept = self.up and fill.epoch == self._epoch and mark[1] < fill.seq and record is not None
        mark[0] -= 1
        if mark[0] == 0:
            del self._inflight[key]
        else:  # a fill of this key that began before this one ended must not replace it
            self._seq += 1
            mark[1] = self._seq
        if kept:
            assert record is not None
            self._put(key, record)

    def invalidate(self, keys: list[bytes] | None) -> None:
        """Drop ``keys`` (None: everything, as Redis says after a flush), and make the
        fills of them in flight keep nothing."""
        if keys is None:
            self.clear()
            return
        self._seq += 1
        for key in keys:
            if self._drop(key):
                self.invalidations.inc()
            mark = self._inflight.get(key)
            if mark is not None:
                mark[1] = self._seq

    def clear(self) -> None:
        """Drop every entry, and make every fill in flight keep nothing."""
        self.invalidations.inc(len(self._entries))
        self._entries.clear()
        self._held.set(0)
        self.size = 0
        self._epoch += 1

    def down(self) -> None:
        """Tracking is not whole: serve and keep nothing until :meth:`reopen`."""
        self.up = False
        self.clear()

    def reopen(self) -> None:
        """Tracking is whole again (from now on: what was read before is not kept)."""
        self.clear()
        self.up = True

    def _put(self, key: bytes, record: bytes) -> None:
        if len(record) < HEADER_SIZE:  # (damage: left to the uncached path to report)
            return
        head = read_header(record)
        expires = head.expires if head.flags & FLAG_EXPIRES else None
        cost = len(key) + len(record) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = (record, expires, cost)
        self.size += cost
        while len(self._entries) > self.items or self.size > self.max_bytes:
            _, (_, _, freed) = self._entries.popitem(last=False)
            self.size -= freed
            self.evictions.inc()
        self._held.set(len(self._entries))

    def _drop(self, key: bytes) -> bool:
        """Drop ``key``'s entry; whether there was one."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.size -= entry[2]
        self._held.set(len(self._entries))
        return True


class Tracker:
    """The tracking connection to one node, kept: ``CLIENT TRACKING ON BCAST PREFIX`` for
    the record keys of ``prefixes``; a reader task that hands every invalidation to the
    cache; a heartbeat that takes the connection for lost when the node stops answering.
    While it is not up, the cache serves and keeps nothing (:meth:`NearCache.down`)."""

    def __init__(self, settings: Settings, address: Address, prefixes: list[bytes], cache: NearCache) -> None:
        """Begin keeping the connection, in the background (the cache is bypassed until it is up)."""
        self._settings, self._address, self._prefixes, self.cache = settings, address, prefixes, cache
        self._heard = 0.0
        loop = asyncio.get_running_loop()
        #: Done once the first attempt to set tracking up has ended, either way.
        self.first: asyncio.Future[None] = loop.create_future()
        #: The tracking connection's CLIENT ID while it is up (for logs and tests).
        self.client_id: int | None = None
        self._task = loop.create_task(self._keep())

    def fresh(self) -> bool:
        """Whether the node was heard from within :data:`LEASE` (checked on every hit)."""
        return self.cache.up and asyncio.get_running_loop().time() - self._heard <= LEASE

    async def close(self) -> None:
        """Stop keeping the connection, and close it; the cache is emptied."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.cache.down()

    async def _keep(self) -> None:
        while True:
            try:
                await self._track()
            except (RedisError, OSError, AttributeError) as exc:  # (redis-py: a read cut by a disconnect)
                _logger.warning("near cache: tracking on %s:%d lost (%s); bypassed until back", *self._address, exc)
            await asyncio.sleep(RETRY)

    async def _track(self) -> None:
        """One tracking connection's life: opened, registered, read until it fails."""
        connection = self._settings.make(self._address)
        beating: asyncio.Task[None] | None = None
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            # redis-py 5.1 on drops an invalidation push its parser has no handler for; before
            # it, the push comes back from read_response as the list it is.
            getattr(connection._parser, "set_invalidation_push_handler", _no_handler)(_as_is)
            await connection.send_command("CLIENT", "ID")
            self.client_id = int(await connection.read_response())
            prefixes = [part for prefix in self._prefixes for part in (b"PREFIX", prefix)]
            await connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", *prefixes)
            await connection.read_response()
            loop = asyncio.get_running_loop()
            self._heard = loop.time()
            self.cache.reopen()
            self._tried()
            beating = loop.create_task(self._beat(connection))
            while True:
                frame = await connection.read_response(push_request=True)
                self._heard = loop.time()
                if isinstance(frame, list) and frame and frame[0] == b"invalidate":
                    self.cache.invalidate(frame[1])
        finally:
            self._tried()
            self.cache.down()
            self.client_id = None
            if beating is not None:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
            await connection.disconnect()

    def _tried(self) -> None:
        if not self.first.done():
            self.first.set_result(None)

    async def _beat(self, connection: Any) -> None:
        """PING every :data:`HEARTBEAT`; past :data:`LEASE` without a word, drop the
        connection (the reader then fails, and the connection is made again)."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(HEARTBEAT)
        while loop.time() - self._heard <= LEASE:
            await connection.send_packed_command(pack_command(("PING",)), check_health=False)
            await asyncio.sleep(HEARTBEAT)
        self.cache.down()
        await connection.disconnect()  # (never a send after it: redis-py would connect again, untracked)


async def _as_is(response: Any) -> Any:
    return response


def _no_handler(handler: Any) -> None:
    """What a parser without push handlers (redis-py before 5.1) is given in their place."""


__all__ = ["ENTRY_OVERHEAD", "HEARTBEAT", "LEASE", "Fill", "NearCache", "Tracker"]
