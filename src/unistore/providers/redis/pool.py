"""The connections to one Redis node: a pool that lends at most so many at once and
makes a caller past them wait for one, rather than fail."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from redis.asyncio.connection import Connection as NodeConnection


class NodePool:
    """The connections to one node: at most ``size`` at once; a caller that finds them all
    lent waits for one to come back (it never fails for want of one)."""

    def __init__(self, make: Callable[[], NodeConnection], size: int) -> None:
        self._make = make
        self._size = size
        self._idle: collections.deque[NodeConnection] = collections.deque()
        self._made: list[NodeConnection] = []
        self._waiters: collections.deque[asyncio.Future[NodeConnection]] = collections.deque()

    async def acquire(self) -> NodeConnection:
        """A connection of this node's (connected on first use), once one is free."""
        if self._idle:
            return self._idle.pop()
        if len(self._made) < self._size:
            connection = self._make()
            self._made.append(connection)
            return connection
        waiter: asyncio.Future[NodeConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed one just as the wait was cancelled
                self.release(waiter.result())
            raise

    def release(self, connection: NodeConnection) -> None:
        """Give ``connection`` back (to the first caller waiting, if any): it has no reply left unread."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    async def close(self) -> None:
        """Disconnect every connection (none is lent: a cleanup waits for the steps first)."""
        for connection in self._made:
            await connection.disconnect()


__all__ = ["NodePool"]
