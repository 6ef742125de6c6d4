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

import collections
from dataclasses import dataclass

from ..._coretypes import FLAG_EXPIRES, HEADER_SIZE, read_header

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

    def __init__(self, items: int, max_bytes: int) -> None:
        self.items, self.max_bytes = items, max_bytes
        self._entries: collections.OrderedDict[bytes, tuple[bytes, int | None, int]] = collections.OrderedDict()
        self.size = 0  # bytes held, as ENTRY_OVERHEAD counts them
        self._seq = 0
        self._epoch = 0
        #: Keys with fills in flight: how many, and the seq of their last invalidation.
        self._inflight: dict[bytes, list[int]] = {}
        #: Whether tracking is whole: only then are entries served and kept.
        self.up = False
        self.hits = self.misses = self.invalidations = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: int) -> bytes | None:
        """The record kept under ``key`` if it is still live at ``now`` (µs), else None."""
        if not self.up:
            self.misses += 1
            return None
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        record, expires, _ = entry
        if expires is not None and expires <= now:
            self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
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
            self.invalidations += self._drop(key)
            mark = self._inflight.get(key)
            if mark is not None:
                mark[1] = self._seq

    def clear(self) -> None:
        """Drop every entry, and make every fill in flight keep nothing."""
        self.invalidations += len(self._entries)
        self._entries.clear()
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
            self.evictions += 1

    def _drop(self, key: bytes) -> bool:
        """Drop ``key``'s entry; whether there was one."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.size -= entry[2]
        return True


__all__ = ["ENTRY_OVERHEAD", "Fill", "NearCache"]
