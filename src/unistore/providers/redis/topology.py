"""Where each of a Redis Cluster's hash slots lives: the slot map, and how it is kept
current.

One server is a topology of one node that owns every slot. A cluster's map is read
with ``CLUSTER SLOTS`` from any node that answers (the masters known so far first,
then the nodes the user named) and kept current: a ``MOVED`` updates its slot at
once, and a node that cannot be reached has the map read again (refreshes asked for
at once share one read).

An address is ``(host, port)``; the node clients themselves live with the connection
(:mod:`.connection`), which hands this class the one call it needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from .layout import SLOTS

Address = tuple[str, int]


class Topology:
    """The owner of every slot (one server: a single node that owns them all).

    Args:
        nodes: where to start: the one server, or the nodes of a cluster to discover it from.
        cluster: whether ``nodes`` belong to a Redis Cluster.
    """

    def __init__(self, nodes: Sequence[Address], cluster: bool) -> None:
        self.cluster = cluster
        self._seeds = list(nodes)
        self._owners: list[Address] = [self._seeds[0]] * SLOTS
        self._lock = asyncio.Lock()
        #: Bumped by every change and every read of the map: a refresh asked for before the last read is done.
        self.generation = 0

    def owner(self, slot: int) -> Address:
        """The node that serves ``slot`` now (as far as this map knows)."""
        return self._owners[slot]

    def masters(self) -> list[Address]:
        """Every node that owns a slot, in a stable order."""
        return sorted(set(self._owners))

    def moved(self, slot: int, address: Address) -> None:
        """A ``MOVED`` reply: ``slot`` is served by ``address`` now."""
        if self._owners[slot] != address:
            self._owners[slot] = address
            self.generation += 1

    async def refresh(self, ask: Callable[[Address], Awaitable[Any]]) -> None:
        """Read the map again (``ask(address)`` runs ``CLUSTER SLOTS`` on a node), in the
        caller's task (so in its step: a cleanup waits for it); callers that wait meanwhile
        take the map the first one read. One server has nothing to refresh.

        Raises:
            RedisError: no node answered (the last failure), or a node is no cluster.
        """
        if not self.cluster:
            return
        before = self.generation
        async with self._lock:
            if self.generation == before:
                await self._read(ask)

    async def _read(self, ask: Callable[[Address], Awaitable[Any]]) -> None:
        failure: BaseException | None = None
        for address in dict.fromkeys([*self.masters(), *self._seeds]):
            try:
                reply = await ask(address)
            except (RedisError, OSError) as exc:
                failure = exc
                continue
            owners = _owners(reply, address)
            if owners != self._owners:
                self._owners = owners
            self.generation += 1  # read: callers that waited need not read it again
            return
        assert failure is not None  # (there is always a seed)
        raise failure


def _owners(reply: Any, asked: Address) -> list[Address]:
    """The owner of every slot by a ``CLUSTER SLOTS`` reply from ``asked`` (a slot no node
    serves stays with whoever served it: a command there gets ``CLUSTERDOWN``, retried)."""
    owners = [asked] * SLOTS
    for entry in reply:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        endpoint = master[0]
        # None, empty or "?": the node announces no address (cluster-preferred-endpoint-type
        # unknown-endpoint): it is reached on the host that was asked
        host = asked[0] if endpoint in (None, b"", b"?") else endpoint.decode()
        owners[start : end + 1] = [(host, int(master[1]))] * (end - start + 1)
    return owners


__all__ = ["Address", "Topology"]
