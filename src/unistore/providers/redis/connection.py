"""How the Redis provider talks to Redis: connections to each node, a pool that waits,
commands routed to the node that owns their slot, and the steps that a cleanup waits for.

It speaks to redis-py's connection objects directly (one round trip = one packed
write, then the replies read in order on that same connection), for three reasons
that a client object could not give:

- **redirections on one connection**: an ``ASK`` is followed by ``ASKING`` and the
  command written together on the same connection (redis-py's cluster client sends them
  on two pooled connections, so the command arrives without its ``ASKING`` and bounces
  back: ``tests/providers/redis/test_cluster_changes.py`` keeps that defect reproduced);
- **a read pinned to a node**: a SCAN or SSCAN cursor belongs to one server's tables;
  :meth:`Connection.exchange` sends to the node given, never to wherever the slot map
  says now, so a reader can tell that its node stopped serving the shard;
- **cancellation**: a command cancelled mid-way (task cancel, ``asyncio.timeout``,
  Ctrl-C) disconnects its connection, which the pool then reconnects, so no reply is
  left for another command to read. redis-py's own ``socket_timeout`` is left unset (its
  send path then wraps the write in ``asyncio.wait_for``, which on Python 3.10 and
  3.11 swallows a cancellation that arrives as the write completes, so a cancelled
  task ran on); the provider's ``socket_timeout`` is a deadline of its own on each
  round trip (:class:`Deadlines`).

A :class:`Connection` belongs to one event loop of one process (a fork or another loop
makes its own). Every command runs in a *step* (:meth:`Connection.step`) that a cleanup
waits for before it closes the connections.

One module, a little over most, because it is one idea read top to bottom: how a
command reaches its node, from the connection to the round trip, its deadline, its
redirections and its retries (the pool, the slot map and what is transient have
rooms of their own).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hiredis import pack_command
from redis.asyncio.connection import Connection as NodeConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import StorageError
from .pool import NodePool
from .retry import ServerBusy, Unsettled, backoff, policy, retries, transient, translation
from .scripts import Script
from .topology import Address, Topology

#: What :meth:`Connection.read_on` gives for a read its node did not answer.
NO_ANSWER: Any = object()
#: Redirections one attempt follows before it waits and tries again.
HOPS = 5
#: A command and its arguments.
Command = Sequence[Any]


@dataclass(frozen=True)
class Settings:
    """How to reach Redis.

    Attributes:
        nodes: the server, or the nodes to discover a cluster from.
        cluster: whether ``nodes`` belong to a Redis Cluster.
        connection_class: redis-py's plain or TLS connection.
        connect: the connection's own settings (credentials, database, TLS, connect timeout).
        max_connections: the most connections open to one node; a caller past them waits.
        socket_timeout: seconds a round trip may take (None: no limit).
    """

    nodes: tuple[Address, ...]
    cluster: bool
    connection_class: type[NodeConnection]
    connect: dict[str, Any]
    max_connections: int
    socket_timeout: float | None

    def make(self, address: Address) -> NodeConnection:
        """A new (unconnected) connection to ``address``: RESP3, no retry and no read
        timeout of redis-py's own (see the module's docstring)."""
        host, port = address
        return self.connection_class(
            **self.connect,
            host=host,
            port=port,
            protocol=3,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
        )


class Watch:
    """One round trip's deadline (see :class:`Deadlines`)."""

    __slots__ = ("_open", "deadline", "expired", "task")

    def __init__(self, open_watches: dict[Watch, None], deadline: float, task: asyncio.Task[Any]) -> None:
        self._open, self.deadline, self.task = open_watches, deadline, task
        self.expired = False

    def end(self) -> None:
        """The round trip is over (its deadline no longer matters)."""
        self._open.pop(self, None)


class Deadlines:
    """The deadlines of the round trips under way on one event loop, kept by one timer.

    Every round trip is given the same time, so they expire in the order they began: one
    timer, set for the oldest, serves them all, and a round trip that ends in time costs a
    dict entry, not a timer (``asyncio.timeout`` around each one cost 10 µs here, a tenth of
    a loopback load). An expired round trip's task is cancelled, and the round trip turns
    that cancellation into a timeout (:func:`_still_cancelled` tells it from a caller's).
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._open: dict[Watch, None] = {}  # in the order they began: the order they expire
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> Watch:
        """Watch the current task's round trip from now."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # (a round trip runs in a task)
        watch = Watch(self._open, loop.time() + self._seconds, task)
        self._open[watch] = None
        if self._timer is None:
            self._timer = loop.call_at(watch.deadline, self._expire)
        return watch

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        for watch in list(self._open):
            if watch.deadline > loop.time():
                self._timer = loop.call_at(watch.deadline, self._expire)
                return
            watch.end()
            watch.expired = True
            watch.task.cancel()


def _still_cancelled() -> bool:
    """After a round trip's own deadline cancelled its task: whether a caller cancelled it
    too (that cancellation then wins). Python 3.10 counts no cancellations: none is seen."""
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    return uncancel is not None and uncancel() > 0


class Step:
    """One step of an operation on a :class:`Connection` (see :meth:`Connection.step`): a
    class rather than a generator, for it wraps every command of every operation."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def __aenter__(self) -> Connection:
        connection = self._connection
        if connection.closed:
            raise StorageError("the provider was closed (cleanup) during this operation; it reconnects on its next one")
        connection.busy += 1
        return connection

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        connection = self._connection
        connection.busy -= 1
        if not connection.busy:
            connection.idle.set()
        if error is not None:
            translated_error = translation(error)
            if translated_error is not None:
                raise translated_error from error


@dataclass(eq=False)  # one per loop: compared (and hashed) by identity
class Connection:
    """What one event loop of one process uses to reach Redis (see the module's docstring)."""

    settings: Settings
    topology: Topology = field(init=False)
    #: The first check of this connection (the provider's), awaited by every operation.
    ready: asyncio.Task[Any] | None = None
    closed: bool = False
    #: Steps under way, and set when there are none (what :meth:`close` waits for).
    busy: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: Bumped by every connection failure: the provider records its shard count again after one.
    failures: int = 0
    #: ``failures`` when the provider last recorded its shard count (-1: never), and when (loop time).
    counted: int = -1
    counted_at: float = 0.0
    #: The provider's near cache on this connection (its ``nearcache.Tracking``), if it has one:
    #: closed with it.
    near: Any = None
    _pools: dict[Address, NodePool] = field(default_factory=dict)
    _deadlines: Deadlines | None = field(init=False)

    def __post_init__(self) -> None:
        self.topology = Topology(self.settings.nodes, self.settings.cluster)
        timeout = self.settings.socket_timeout
        self._deadlines = None if timeout is None else Deadlines(timeout)

    # -- steps -------------------------------------------------------------------------

    def step(self) -> Step:
        """This connection for one step of an operation (``async with connection.step()``),
        Redis's errors translated; refused once :meth:`close` has begun. A search holds its
        connection from one chunk to the next: a chunk read on a closed connection would
        open new ones that nothing closes.

        Raises:
            StorageError: the provider was closed (cleanup) since the operation began.
        """
        return Step(self)

    async def close(self) -> None:
        """Refuse new steps, let those under way finish, and close every connection. Run
        as a task of its own (the provider's cleanup), so that a cancelled cleanup does
        not cut it short."""
        self.closed = True
        try:
            while self.busy:
                self.idle.clear()
                await self.idle.wait()
        finally:  # closed even when the wait is cancelled (and by two closes at once: each takes what is left)
            pools, self._pools = list(self._pools.values()), {}
            for pool in pools:
                with contextlib.suppress(RedisConnectionError, OSError):
                    await pool.close()

    # -- one round trip ------------------------------------------------------------------

    def _pool(self, address: Address) -> NodePool:
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = NodePool(lambda: self.settings.make(address), self.settings.max_connections)
        return pool

    async def exchange(self, address: Address, commands: Sequence[Command], asking: bool = False) -> list[Any]:
        """Send ``commands`` to ``address`` in one write on one connection and read their
        replies; an error reply comes back as its exception, in its place. With ``asking``,
        each command goes after an ``ASKING`` (an ``ASK`` redirection's target).

        Raises:
            redis.exceptions.ConnectionError: the node could not be reached or the
                connection was lost (the commands may or may not have run).
            redis.exceptions.TimeoutError: no answer within ``socket_timeout``.
        """
        pool = self._pool(address)
        connection = await pool.acquire()
        sent: list[Command] = []
        for command in commands:
            if asking:
                sent.append(("ASKING",))
            sent.append(command)
        complete = False
        watch = self._deadlines.start() if self._deadlines is not None else None
        try:
            replies = await _round_trip(connection, sent)
            complete = True
        except asyncio.CancelledError:
            if watch is not None and watch.expired and not _still_cancelled():  # ours, not a caller's
                raise RedisTimeoutError(
                    f"no answer from {address[0]}:{address[1]} within {self.settings.socket_timeout} s"
                ) from None
            raise
        finally:
            if watch is not None:
                watch.end()
            if not complete:  # cut off mid-way (a cancel, a timeout, a lost connection): nothing left unread
                await connection.disconnect(nowait=True)
            pool.release(connection)
        return replies[1::2] if asking else replies

    # -- routed ----------------------------------------------------------------------------

    async def call(self, slot: int, *command: Any) -> Any:
        """One command about ``slot`` (see :meth:`routed`)."""
        async with Step(self):
            return await self._once(slot, command)

    async def routed(self, slot: int, commands: Sequence[Command]) -> list[Any]:
        """``commands``, all about ``slot``, in one round trip to the node that serves it,
        in a step: ``MOVED`` and ``ASK`` followed at once, what time fixes retried with
        backoff. A command may run again on a retry: send only commands that may (reads,
        and writes that are idempotent or carry a token).

        Raises:
            StorageError: the first error reply, or the last failure once the retries
                are spent, translated.
        """
        async with Step(self):
            return await self._routed(slot, commands)

    async def script(self, slot: int, script: Script, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        """Run ``script`` (by its SHA; sent whole once a node lacks it) on ``slot``'s node."""
        async with Step(self):
            try:
                return await self._once(slot, ("EVALSHA", script.sha, len(keys), *keys, *args))
            except NoScriptError:
                return await self._once(slot, ("EVAL", script.source, len(keys), *keys, *args))

    async def on_node(self, address: Address, commands: Sequence[Command]) -> list[Any]:
        """``commands``, which name no key (INFO, SCAN), on the node ``address`` in one round
        trip, in a step: a lost connection retried with backoff (the pool opens another).
        Error replies come back in their places, as :meth:`exchange` gives them.

        Raises:
            StorageError: the last failure once the retries are spent, translated.
        """
        async with Step(self):
            return await policy(self.topology.cluster).call_with_retry(
                lambda: self.exchange(address, commands), self.failed
            )

    async def read_on(self, address: Address, command: Command) -> Any:
        """``command``, a read of one slot, sent once to the node ``address`` only, in a
        step (a near-cache fill must come from the node whose invalidations it follows):
        its reply; or :data:`NO_ANSWER` when the node gave an error reply instead (ASK,
        TRYAGAIN, WRONGTYPE, ...) or the connection failed (an idle one the server closed):
        the caller reads through the routed path, which retries and reports.

        Raises:
            NodeChanged: the node no longer serves the slot (``MOVED``).
        """
        async with Step(self):
            try:
                [reply] = await self.exchange(address, (command,))
            except RedisConnectionError:
                return NO_ANSWER
        if isinstance(reply, MovedError):
            self.topology.moved(reply.slot_id, (reply.host, int(reply.port)))
            raise NodeChanged(f"{address[0]}:{address[1]} no longer serves slot {reply.slot_id}: {reply}")
        return NO_ANSWER if isinstance(reply, Exception) else reply

    async def _once(self, slot: int, command: Command) -> Any:
        """One command about ``slot``: sent once to the slot's owner, and through the retrying
        path (:meth:`_routed`) only when that first answer is a redirection or a failure time
        fixes, which nearly every load and save skips.

        Raises:
            redis.exceptions.RedisError: an error reply, or the last failure of the retries.
        """
        try:
            [reply] = await self.exchange(self.topology.owner(slot), (command,))
        except RedisConnectionError:
            pass  # (sent again by the retrying path, which knows what to do about it)
        else:
            if not isinstance(reply, Exception):
                return reply
            if not isinstance(reply, AskError) and not transient(reply):
                raise reply
        [reply] = await self._routed(slot, [command])
        return reply

    async def _routed(self, slot: int, commands: Sequence[Command]) -> list[Any]:
        return await policy(self.topology.cluster).call_with_retry(lambda: self._attempt(slot, commands), self.failed)

    async def _attempt(self, slot: int, commands: Sequence[Command]) -> list[Any]:
        address, asking = self.topology.owner(slot), False
        for _ in range(HOPS):
            replies = await self.exchange(address, commands, asking)
            redirected = [reply for reply in replies if isinstance(reply, AskError)]  # MovedError is one
            if redirected and not self.topology.cluster:
                raise StorageError(
                    f"{address[0]}:{address[1]} is a node of a Redis Cluster: reach it with a "
                    f"redis+cluster:// URL or cluster_nodes ({redirected[0]})"
                )
            if not redirected:
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return replies
            moved = next((reply for reply in redirected if isinstance(reply, MovedError)), None)
            if moved is not None:  # the slot has a new owner: every command goes there
                self.topology.moved(moved.slot_id, (moved.host, int(moved.port)))
                address, asking = self.topology.owner(slot), False
                continue
            if len(redirected) < len(replies):  # a migration has split the commands' keys: wait
                raise Unsettled(f"slot {slot} is migrating: {redirected[0]}")
            address, asking = (redirected[0].host, int(redirected[0].port)), True
        raise Unsettled(f"slot {slot}: redirected more than {HOPS} times")

    async def failed(self, error: Exception) -> None:
        """After a transient failure: on a cluster, read the slot map again (the node may
        be gone, a replica promoted); remember that a connection failed."""
        if isinstance(error, RedisConnectionError):
            self.failures += 1
        if self.topology.cluster and not isinstance(error, ResponseError):
            with contextlib.suppress(Exception):  # no node answering: the next attempt says so
                await self.refresh()

    async def refresh(self) -> None:
        """Read the cluster's slot map again (one server: nothing to do)."""
        await self.topology.refresh(self._slots_of)

    async def _slots_of(self, address: Address) -> Any:
        [reply] = await self.exchange(address, [("CLUSTER", "SLOTS")])
        if isinstance(reply, Exception):
            raise reply
        return reply

    def broadcast_targets(self) -> list[Address]:
        """Every node that serves data: the one server, or every master of the cluster."""
        return self.topology.masters()


async def _round_trip(connection: NodeConnection, commands: Sequence[Command]) -> list[Any]:
    # hiredis packs a command in C, five times faster than redis-py's own encoder (a save's
    # script call: 2 µs against 10).
    packed = b"".join([pack_command(tuple(command)) for command in commands])
    await connection.send_packed_command(packed, check_health=False)
    replies = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:  # an error reply: the connection is still in step
            replies.append(_classified(exc))
    return replies


#: Error replies that redis-py may leave a plain ResponseError, by code: the cluster's
#: (redis-py 8 parses them on any connection, redis-py 5 only on its cluster client's),
#: and BUSY (another client's script runs long), which time fixes.
_CODES: dict[str, type[ResponseError]] = {
    "MOVED": MovedError,
    "ASK": AskError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
    "MASTERDOWN": MasterDownError,
    "BUSY": ServerBusy,
}


def _classified(error: ResponseError) -> ResponseError:
    """An error reply as the class its code names (see :data:`_CODES`)."""
    if type(error) is ResponseError:
        code, _, rest = str(error).partition(" ")
        kind = _CODES.get(code)
        if kind is not None:
            return kind(rest)
    return error


class NodeChanged(Exception):
    """The node a pinned read started on no longer serves its shard (``MOVED``, or the
    connection to it was lost): a cursor from it means nothing elsewhere."""


class Pinned:
    """Reads of one shard tied to the node they started on (a SCAN-family cursor belongs
    to one server's tables).

    :meth:`run` sends to that node only. A node that stops serving the shard (a
    ``MOVED``, a lost connection) raises :class:`NodeChanged`: the reader starts its walk
    again on the shard's owner now (:meth:`restart`, with backoff, a bounded number of
    times) and drops what it meets twice. A shard in migration (``ASK``, ``TRYAGAIN``) or a
    cluster electing a master is waited for. A command that names no key (SCAN, DBSIZE)
    is followed, on a cluster, by a probe that names the shard's slot, so that a node that
    serves the slot no more, or is migrating it, says so.
    """

    def __init__(self, connection: Connection, slot: int, probe: tuple[bytes, bytes]) -> None:
        self._connection = connection
        self._slot = slot
        self._probe = (
            "EXISTS",
            *probe,
        )  # one key that may exist, one that never does: a migration answers ASK or TRYAGAIN
        self.node: Address | None = None
        self._restarts = 0

    async def run(self, commands: Sequence[Command], keyless: bool = False) -> list[Any]:
        """The replies of ``commands`` on the node (see the class).

        Raises:
            NodeChanged: the node no longer serves the shard.
            redis.exceptions.RedisError: an error reply, or a wait that did not end.
        """
        async with self._connection.step():
            return await policy(self._connection.topology.cluster).call_with_retry(
                lambda: self._once(commands, keyless), self._connection.failed
            )

    async def _once(self, commands: Sequence[Command], keyless: bool) -> list[Any]:
        connection = self._connection
        if self.node is None:
            self.node = connection.topology.owner(self._slot)
        probed = keyless and connection.topology.cluster
        try:
            replies = await connection.exchange(self.node, [*commands, self._probe] if probed else commands)
        except RedisConnectionError as exc:  # the node may have restarted: its cursors are void
            await connection.failed(exc)
            raise NodeChanged(f"lost the connection to {self.node[0]}:{self.node[1]}") from exc
        for reply in replies:
            if isinstance(reply, MovedError):
                connection.topology.moved(reply.slot_id, (reply.host, int(reply.port)))
                raise NodeChanged(f"slot {self._slot} moved: {reply}")
        for reply in replies:
            if isinstance(reply, AskError) or transient(reply):
                raise Unsettled(f"slot {self._slot} is migrating or its cluster is electing a master: {reply}")
            if isinstance(reply, Exception):
                raise reply
        return replies[: len(commands)]

    async def restart(self, cause: NodeChanged) -> None:
        """Before a walk starts again on the shard's owner now: back off, bounded.

        Raises:
            Unsettled: the shard kept moving (the cause chained).
        """
        self._restarts += 1
        async with self._connection.step():
            if self._restarts > retries(self._connection.topology.cluster):
                raise Unsettled(
                    f"gave up reading slot {self._slot} after {self._restarts - 1} restarts: {cause}"
                ) from cause
            await asyncio.sleep(backoff().compute(self._restarts))
        self.node = None


__all__ = ["HOPS", "NO_ANSWER", "Connection", "NodeChanged", "NodePool", "Pinned", "Settings"]
