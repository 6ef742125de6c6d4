"""The near cache: records recently loaded from Redis, kept in this process's memory and
dropped the moment Redis says another client changed them.

Redis tells by *server-assisted client-side caching* in broadcast mode: a connection of
our own per node that serves one of the namespace's shards (:class:`Tracker`) asks
``CLIENT TRACKING ON BCAST PREFIX`` for the record keys of those shards, and the server
pushes the name of every such key a write touches (RESP3 pushes, on that same connection:
one socket to watch, in order with the replies to our heartbeats). Redis queues a write's
invalidations before it answers the writer, so an entry is stale at most for one network
delivery. :class:`Tracking` keeps one tracker per such node, and when a node stops serving
a shard (a failover, a resharding: its heartbeat's probe of the shard is redirected) it
reads the slot map again and tracks each shard where it is now.

What keeps the cache true (:class:`NearCache`):

- **Fill tokens.** A load that misses marks its key before its GET; an invalidation of
  that key meanwhile (or one of our own writes, or a clear) means the reply is returned
  but not kept. A late reply never replaces what a newer one put.
- **Epochs, by shard.** Whenever a shard's tracking is not known to be whole (its
  connection is not up yet, it was lost, a heartbeat is late, the node stopped serving the
  shard), that shard's entries are dropped and it is bypassed, and fills of it begun
  before are not kept. A fill is kept only when read from the node that tracks its shard.
- **Expiry** is checked on every hit (Redis pushes an expired key's invalidation only
  when it deletes it, possibly much later).
- **Bounds**: at most ``items`` entries and ``max_bytes`` bytes, least recently used first out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from hiredis import pack_command
from redis.exceptions import RedisError

from ..._coretypes import FLAG_EXPIRES, HEADER_SIZE, read_header
from ...metrics import MetricsManager
from .connection import Connection, Settings
from .layout import PROBE, RECORD
from .topology import Address

_logger = logging.getLogger(__name__)

#: Seconds between two heartbeats on a tracking connection.
HEARTBEAT = 0.5
#: Seconds without a word from a tracking connection after which it is taken for lost (its
#: shards' entries dropped and bypassed until it is back): a hit is served only within it.
#: (Below a cluster's node timeout, so that a stalled master's entries go before a replica
#: can be promoted in its place.)
LEASE = 2.0
#: Seconds before the first attempt to bring lost tracking back, doubled by each that
#: fails, up to RETRY_MOST.
RETRY, RETRY_MOST = 0.2, 5.0

#: Seconds of loads served from memory after which a load gives the event loop a turn
#: (:meth:`NearCache.let_pushes_in`): how late an invalidation may be read while a task is
#: busy with hits.
TURN = 0.001

#: The tracking connections' name (CLIENT LIST shows it).
NAME = "unistore-near-cache"

#: What an entry costs beyond its key and record (the dict slot, the tuple, the ints), in bytes.
ENTRY_OVERHEAD = 200


class Fill(NamedTuple):
    """A load's claim on a key, taken before its read (see :meth:`NearCache.begin`)."""

    key: bytes
    part: int
    seq: int
    epoch: int


class NearCache:
    """Records by their Redis key, least recently used first, with the fill protocol that
    keeps out a reply an invalidation overtook. Its entries belong to *parts* (the
    namespace's shards, by number), each trusted while its tracking is heard from (see
    :meth:`trust`). Not thread-safe: one event loop's."""

    def __init__(self, items: int, max_bytes: int, parts: int, namespace: str = "default") -> None:
        self.items, self.max_bytes, self.parts = items, max_bytes, parts
        #: record key -> (record, expires µs or None, bytes counted, part)
        self._entries: collections.OrderedDict[bytes, tuple[bytes, int | None, int, int]] = collections.OrderedDict()
        self.size = 0  # bytes held, as ENTRY_OVERHEAD counts them
        self._seq = 0
        #: By part: bumped whenever its entries are dropped (fills begun before keep nothing),
        #: and the loop time until which it is trusted (0: its tracking is down).
        self._epochs = [0] * parts
        self._until = [0.0] * parts
        #: Keys with fills in flight: how many, and the seq of their last invalidation.
        self._inflight: dict[bytes, list[int]] = {}
        #: The time (monotonic) from which a load gives the event loop a turn first (see
        #: :meth:`let_pushes_in`).
        self.due = 0.0
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

    async def let_pushes_in(self) -> None:
        """Give the event loop two turns, so that an invalidation the server has pushed is
        read (the first turn reads the socket, the second runs the tracking's reader) before
        a load looks here. Loads call it once every :data:`TURN` at most: a task that serves
        hits without awaiting anything else would otherwise keep the reader from running,
        and serve what another client changed until the lease ran out."""
        self.due = time.monotonic() + TURN
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def trusted(self, part: int) -> bool:
        """Whether ``part``'s entries may be served now."""
        return time.monotonic() <= self._until[part]

    def get(self, key: bytes, part: int, now: int) -> bytes | None:
        """The record kept under ``key`` (of ``part``) if its part is trusted and the
        record is still live at ``now`` (µs), else None."""
        entry = self._entries.get(key) if time.monotonic() <= self._until[part] else None
        if entry is None:
            self.misses.inc()
            return None
        expires = entry[1]
        if expires is not None and expires <= now:
            self._drop(key)
            self.misses.inc()
            return None
        self._entries.move_to_end(key)
        self.hits.inc()
        return entry[0]

    def begin(self, key: bytes, part: int) -> Fill:
        """Claim ``key`` (of ``part``) before reading it from Redis (see :meth:`end`)."""
        mark = self._inflight.get(key)
        if mark is None:
            self._inflight[key] = [1, -1]
        else:
            mark[0] += 1
        return Fill(key, part, self._seq, self._epochs[part])

    def end(self, fill: Fill, record: bytes | None) -> None:
        """The read ``fill`` claimed is over (``record``: what it read from the node that
        tracks its part; None: nothing, or a read elsewhere or failed): keep it unless the
        part is not trusted now, or its tracking or the key changed meanwhile."""
        key, part, seq, epoch = fill
        mark = self._inflight[key]
        clock = time.monotonic()
        self.due = clock + TURN  # (the read awaited the network: the event loop has had its turns)
        kept = record is not None and epoch == self._epochs[part] and mark[1] < seq and clock <= self._until[part]
        mark[0] -= 1
        if mark[0] == 0:
            del self._inflight[key]
        else:  # a fill of this key that began before this one ended must not replace it
            self._seq += 1
            mark[1] = self._seq
        if kept:
            assert record is not None
            self._put(key, record, part)

    def invalidate(self, keys: list[bytes]) -> None:
        """Drop ``keys``, and make the fills of them in flight keep nothing."""
        self._seq += 1
        for key in keys:
            if self._drop(key):
                self.invalidations.inc()
            mark = self._inflight.get(key)
            if mark is not None:
                mark[1] = self._seq

    def clear(self, parts: Sequence[int] | None = None) -> None:
        """Drop every entry of ``parts`` (None: of all), and make every fill of them in
        flight keep nothing (as after a flush, or a namespace dropped)."""
        everything = parts is None or len(parts) == len(self._epochs)
        for part in range(len(self._epochs)) if parts is None else parts:
            self._epochs[part] += 1
        if everything:
            dropped = list(self._entries)
        else:
            chosen = set(parts or ())
            dropped = [key for key, entry in self._entries.items() if entry[3] in chosen]
        for key in dropped:
            self._drop(key)
        self.invalidations.inc(len(dropped))

    def trust(self, parts: Sequence[int]) -> None:
        """``parts``' tracking is whole and was heard from just now: serve them for
        :data:`LEASE` from now. A part trusted again after it was down keeps no fill begun
        before (its read may have run before the node tracked it)."""
        until = time.monotonic() + LEASE
        for part in parts:
            if not self._until[part]:
                self._epochs[part] += 1
            self._until[part] = until

    def down(self, parts: Sequence[int] | None = None) -> None:
        """``parts``' tracking (None: all) is not whole: their entries dropped, nothing of
        them served or kept until :meth:`trust`."""
        for part in range(len(self._until)) if parts is None else parts:
            self._until[part] = 0.0
        self.clear(parts)

    def _put(self, key: bytes, record: bytes, part: int) -> None:
        if len(record) < HEADER_SIZE:  # (damage: left to the uncached path to report)
            return
        head = read_header(record)
        expires = head.expires if head.flags & FLAG_EXPIRES else None
        cost = len(key) + len(record) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = (record, expires, cost, part)
        self.size += cost
        while len(self._entries) > self.items or self.size > self.max_bytes:
            _, (_, _, freed, _) = self._entries.popitem(last=False)
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
    """The tracking connection to one node, for one life: opened, ``CLIENT TRACKING ON
    BCAST PREFIX`` for the record keys of its shards, each shard's probe answered by the
    node (it serves them), then read until it fails. A reader hands every invalidation to
    the cache; a heartbeat probes the shards every :data:`HEARTBEAT` (a redirection: the
    node stopped serving one) and takes the connection for lost past :data:`LEASE` without
    a word. Its shards are trusted only while it is up (:meth:`NearCache.trust`)."""

    def __init__(
        self, settings: Settings, address: Address, shards: Sequence[tuple[int, bytes]], cache: NearCache
    ) -> None:
        """Begin, in the background: ``shards`` are (number, key prefix) of the shards
        ``address`` serves."""
        self.address, self.cache = address, cache
        self.parts = tuple(number for number, _ in shards)
        self._prefixes = [prefix + RECORD for _, prefix in shards]
        self._probes = [pack_command(cast(tuple[Any, ...], (b"EXISTS", prefix + PROBE))) for _, prefix in shards]
        self._settings = settings
        #: The tracking connection's CLIENT ID while it is up (for logs and tests).
        self.client_id: int | None = None
        #: Done once the connection is up, or its life over.
        self.up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.get_running_loop().create_task(self._track())

    async def close(self) -> None:
        """End its life now (its shards are dropped)."""
        await _end(self.task)

    async def _track(self) -> None:
        connection = self._settings.make(self.address)
        beating: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        try:
            client_id = await asyncio.wait_for(self._register(connection), LEASE)
            # the node's answers to the shards' probes (a redirection raises: it does not
            # serve one), with the pushes that come between them
            probes = b"".join(self._probes)
            await connection.send_packed_command(probes, check_health=False)
            unanswered = len(self._probes)
            while True:
                frame = await connection.read_response(push_request=True)
                if isinstance(frame, list) and frame and frame[0] == b"invalidate":
                    if frame[1] is None:  # a flush (of any database: Redis does not say which)
                        self.cache.clear(self.parts)
                    else:
                        self.cache.invalidate(frame[1])
                elif unanswered:
                    unanswered -= 1
                    if not unanswered:  # every write to the shards from here on is pushed to us
                        self.client_id = client_id
                        self.up.set_result(None)
                        beating = loop.create_task(self._beat(connection, probes))
                if not unanswered:
                    self.cache.trust(self.parts)
        finally:
            self.cache.down(self.parts)
            self.client_id = None
            if not self.up.done():
                self.up.set_result(None)
            if beating is not None:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
            await connection.disconnect()

    async def _register(self, connection: Any) -> int:
        """Connect and ask for the shards' invalidations; the connection's CLIENT ID."""
        await connection.connect()
        # redis-py 5.1 on drops an invalidation push its parser has no handler for; before
        # it, the push comes back from read_response as the list it is.
        getattr(connection._parser, "set_invalidation_push_handler", _no_handler)(_as_is)
        await connection.send_command("CLIENT", "SETNAME", NAME)  # (found in CLIENT LIST by it)
        await connection.read_response()
        await connection.send_command("CLIENT", "ID")
        client_id = int(await connection.read_response())
        prefixes = [part for prefix in self._prefixes for part in (b"PREFIX", prefix)]
        await connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", *prefixes)
        await connection.read_response()  # (its OK comes before any push)
        return client_id

    async def _beat(self, connection: Any, probes: bytes) -> None:
        """Probe the shards every :data:`HEARTBEAT`; once they are no longer trusted (past
        :data:`LEASE` without a word, or a probe could not be sent), drop the connection
        (the reader then fails)."""
        with contextlib.suppress(RedisError, OSError):  # (a send that fails: the connection is lost)
            await asyncio.sleep(HEARTBEAT)
            while self.cache.trusted(self.parts[0]):
                await connection.send_packed_command(probes, check_health=False)
                await asyncio.sleep(HEARTBEAT)
        self.cache.down(self.parts)
        await connection.disconnect()  # (never a send after it: redis-py would connect again, untracked)


class Tracking:
    """A provider's near cache in one event loop of one process, and its trackers: one
    per node that serves one of the namespace's shards (by the slot map of
    ``connection``, which it reads again whenever one ends or a load is redirected)."""

    def __init__(self, connection: Connection, shards: Sequence[tuple[int, bytes, int]], cache: NearCache) -> None:
        """Begin, in the background: ``shards`` are (number, key prefix, slot)."""
        self.cache = cache
        self._shards = list(shards)
        #: The node tracking each shard, by number (until tracking is first set up: the one
        #: serving it, its entries not trusted yet).
        self._nodes = [connection.topology.owner(slot) for _, _, slot in self._shards]
        self._trackers: dict[Address, Tracker] = {}
        self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        #: The provider's connection of this loop, whose slot map it follows.
        self.connection = connection
        #: Done once the first attempt to set tracking up has ended, either way.
        self.first: asyncio.Future[None] = loop.create_future()
        self._lost = False  # whether its loss was logged (once, until tracking is back)
        self._task = loop.create_task(self._keep())

    def node(self, part: int) -> Address:
        """The node that tracks ``part``, where its fills must be read."""
        return self._nodes[part]

    def moved(self, part: int) -> None:
        """A read of ``part`` was redirected: its node serves it no more. Its tracker's
        life ends, and its shards are bypassed until tracked where they are now."""
        self.cache.down([part])
        with contextlib.suppress(KeyError):  # (none while the trackers are being replaced: no matter)
            self._trackers[self._nodes[part]].task.cancel()
        self._changed.set()

    def tracker(self, part: int) -> Tracker | None:
        """The tracker of ``part`` now (for tests and logs; None while they are replaced)."""
        return self._trackers.get(self._nodes[part])

    async def close(self) -> None:
        """Stop tracking and close every tracking connection; the cache is emptied."""
        await _end(self._task)
        self._tried()  # (a load waiting for the first attempt goes on, and finds the provider closed)
        for tracker in self._trackers.values():
            await tracker.close()
        self._trackers.clear()
        self.cache.down()

    async def _keep(self) -> None:
        pause = RETRY
        try:
            while True:
                self._changed.clear()
                try:
                    await self.connection.refresh()  # (a cluster's slot map; one server has none)
                except (RedisError, OSError) as exc:
                    self._log(f"the slot map could not be read ({exc})")
                else:
                    if await self._assign():
                        pause = RETRY
                    self._tried()
                    await self._until_changed()
                self._tried()
                # (longer each time it fails again: a node that refuses tracking is not asked
                # five times a second)
                await asyncio.sleep(pause)
                pause = min(2 * pause, RETRY_MOST)
        finally:
            self._tried()

    async def _until_changed(self) -> None:
        """Wait until a tracker's life ends or a load is redirected."""
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait(
                [changed, *(t.task for t in self._trackers.values())], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            changed.cancel()
        for tracker in self._trackers.values():
            if tracker.task.done() and not tracker.task.cancelled():
                error = tracker.task.exception()
                self._log(f"no tracking on {tracker.address[0]}:{tracker.address[1]} ({type(error).__name__}: {error})")

    def _tried(self) -> None:
        if not self.first.done():
            self.first.set_result(None)

    async def _assign(self) -> bool:
        """A tracker for every node that serves a shard now; those whose node serves other
        shards than before, or whose life ended, replaced. Whether all came up."""
        owner = self.connection.topology.owner
        wanted: dict[Address, list[tuple[int, bytes]]] = {}
        for number, prefix, slot in self._shards:
            wanted.setdefault(owner(slot), []).append((number, prefix))
        for address, tracker in list(self._trackers.items()):
            shards = wanted.get(address)
            if tracker.task.done() or shards is None or tracker.parts != tuple(number for number, _ in shards):
                del self._trackers[address]
                await tracker.close()
        for address, shards in wanted.items():
            if address not in self._trackers:
                self._trackers[address] = Tracker(self.connection.settings, address, shards, self.cache)
        for address, shards in wanted.items():
            for number, _ in shards:
                self._nodes[number] = address
        await asyncio.wait([tracker.up for tracker in self._trackers.values()], timeout=LEASE)
        whole = all(tracker.client_id is not None for tracker in self._trackers.values())
        if whole:
            self._lost = False
        return whole

    def _log(self, what: str) -> None:
        if not self._lost:
            self._lost = True
            _logger.warning("near cache: %s; its shards bypassed until tracking is back", what)


async def _end(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` until it has ended (on Python 3.10 and 3.11, ``wait_for`` may swallow
    a cancellation that comes as what it waits for completes): a close never hangs on it."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled():
        task.exception()  # (how it ended was logged: retrieved, not reported again)


async def _as_is(response: Any) -> Any:
    return response


def _no_handler(handler: Any) -> None:
    """What a parser without push handlers (redis-py before 5.1) is given in their place."""


__all__ = ["ENTRY_OVERHEAD", "HEARTBEAT", "LEASE", "NAME", "TURN", "Fill", "NearCache", "Tracker", "Tracking"]
