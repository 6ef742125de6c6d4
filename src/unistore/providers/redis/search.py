"""How a search reads a namespace shard: the sizes its planner weighs, the readers of each
access path, and the scatter that reads every shard at once.

Each reader walks one shard on the node that serves it (:class:`~.connection.Pinned`):
a SCAN or SSCAN cursor, or a position in a sorted set, means something only there. When
that node stops serving the shard (a failover, a finished migration) the walk starts again
on the new owner and the search loop drops what it meets twice, so a search either yields
every match once or fails with :class:`~unistore.StorageConnectionError`; it never ends
early without saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from ... import index
from .connection import Connection, NodeChanged, Pinned
from .layout import PROBE, posting_key, record_key, scan_pattern, time_key

_T = TypeVar("_T")

#: What a candidate costs on each path, in µs, on loopback (docs/benchmarks.md):
#: SCAN visits a key for about half a microsecond of server time; a candidate
#: reached through a set costs its share of an SSCAN page and of an MGET.
COSTS = index.Costs(scan=0.5, fetch=9.0, posting=1.0, time_entry=1.0)
#: Keys a SCAN visits per call.
SCAN_COUNT = 1000


class Shard:
    """One namespace shard as a search sees it: its key prefix, slot and marker."""

    __slots__ = ("marker", "number", "prefix", "slot")

    def __init__(self, number: int, prefix: bytes, slot: int, marker: bytes) -> None:
        self.number, self.prefix, self.slot, self.marker = number, prefix, slot, marker

    def pinned(self, connection: Connection) -> Pinned:
        """Reads of this shard tied to the node that serves it now."""
        return Pinned(connection, self.slot, (self.marker, self.prefix + PROBE))


class Sizes:
    """The sizes of a shard's candidate sources, read in one round trip (:class:`index.Sizes`)."""

    def __init__(self, postings: dict[tuple[int, bytes], int], keys: int, times: dict[int, int]) -> None:
        self._postings = postings
        self._keys = keys
        self._times = times

    @classmethod
    async def read(cls, pinned: Pinned, prefix: bytes, spec: Any) -> Sizes:
        """The sizes the planner weighs for ``spec``, read on the node that serves the shard."""
        terms = index.query_postings(spec)
        bounds = [
            (kind, low, high)
            for kind, low, high in (
                (index.CREATED, spec.created_after, spec.created_before),
                (index.EXPIRES, spec.expires_after, spec.expires_before),
            )
            if low is not None or high is not None
        ]
        everything = spec.pattern is None  # a SCAN then yields every record of the shard
        commands: list[tuple[Any, ...]] = [("SCARD", posting_key(prefix, kind, term)) for kind, term in terms]
        commands += [
            ("ZCOUNT", time_key(prefix, kind), _score(low, "-inf"), _score(high, "+inf")) for kind, low, high in bounds
        ]
        if everything:
            commands.append(("ZCARD", time_key(prefix, index.CREATED)))  # every item has its creation time
        commands.append(("DBSIZE",))
        while True:
            try:
                replies = await pinned.run(commands, keyless=True)  # DBSIZE: of the node that serves the shard
                break
            except NodeChanged as moved:
                await pinned.restart(moved)
        keyspace = replies.pop()
        # What a SCAN costs, counted in keys visited (the planner's unit): every key of
        # the database, and, when no pattern narrows what it yields, each of the shard's
        # records fetched, at what a fetch costs in visits. (A pattern is taken to yield few.)
        fetched = replies.pop() * COSTS.fetch / COSTS.scan if everything else 0
        return cls(
            dict(zip(terms, replies, strict=False)),
            int(keyspace) + math.ceil(fetched),
            {kind: int(count) for (kind, _, _), count in zip(bounds, replies[len(terms) :], strict=True)},
        )

    def posting(self, kind: int, term: bytes) -> int:
        """How many items the posting set of ``term`` holds."""
        return int(self._postings[kind, term])

    def keys(self, literal: bytes, most: int | None) -> int:
        """What a SCAN costs, in keys visited, whatever the prefix (see :meth:`read`)."""
        return int(self._keys)  # a SCAN visits every key of the database, whatever the prefix (see read)

    def times(self, kind: int, low: int | None, high: int | None, most: int) -> int:
        """How many items the time order ``kind`` holds between the bounds."""
        return int(self._times[kind])


def _score(micros: int | None, unbounded: str) -> str:
    return unbounded if micros is None else str(micros)


_RESTART = object()  # a reader's position: its walk starts again (on the shard's owner now)


class _Reader(ABC):
    """A chunk reader (``read(position)``, as :mod:`unistore.index`'s loop calls it) of one
    shard on one node, that starts again when the node changes."""

    #: The plan it reads (set by :func:`reader`).
    plan: index.Plan

    def __init__(self, pinned: Pinned, prefix: bytes) -> None:
        self._pinned, self._prefix = pinned, prefix

    async def __call__(self, position: Any) -> index.Chunk:
        try:
            return await self._page(None if position is _RESTART else position)
        except NodeChanged as moved:
            await self._pinned.restart(moved)
            return [], _RESTART

    @abstractmethod
    async def _page(self, position: Any) -> index.Chunk:
        """The chunk at ``position`` (None: the first) and where the next one starts."""

    async def _records(self, members: list[Any]) -> list[tuple[bytes, bytes]]:
        """The (key, record) of each member that still has a record (Redis may have expired it)."""
        if not members:
            return []
        [records] = await self._pinned.run([("MGET", *(record_key(self._prefix, member) for member in members))])
        return [(member, record) for member, record in zip(members, records, strict=True) if record is not None]


class PostingReader(_Reader):
    """Walks a posting set with SSCAN; narrows each page by the plan's other sets (SMISMEMBER)."""

    def __init__(self, pinned: Pinned, prefix: bytes, first: bytes, others: list[bytes]) -> None:
        super().__init__(pinned, prefix)
        self._first, self._others = first, others

    async def _page(self, cursor: Any) -> index.Chunk:
        [(after, members)] = await self._pinned.run([("SSCAN", self._first, cursor or 0, "COUNT", index.SEARCH_CHUNK)])
        if members and self._others:
            flags = await self._pinned.run([("SMISMEMBER", other, *members) for other in self._others])
            members = [member for member, *marks in zip(members, *flags, strict=True) if all(marks)]
        return await self._records(members), int(after) or None


class ScanReader(_Reader):
    """Walks the node's keys with SCAN MATCH, the shard's prefix before the query's pattern."""

    def __init__(self, pinned: Pinned, prefix: bytes, pattern: bytes | None) -> None:
        super().__init__(pinned, prefix)
        self._match = scan_pattern(prefix, pattern)
        self._cut = len(record_key(prefix, b""))

    async def _page(self, cursor: Any) -> index.Chunk:
        [(after, keys)] = await self._pinned.run(
            [("SCAN", cursor or 0, "MATCH", self._match, "COUNT", SCAN_COUNT)], keyless=True
        )
        return await self._records([key[self._cut :] for key in keys]), int(after) or None


class TimeReader(_Reader):
    """Walks a time order by score, a page at a time; resumes after the last (score, rank)."""

    def __init__(self, pinned: Pinned, prefix: bytes, key: bytes, low: int | None, high: int | None) -> None:
        super().__init__(pinned, prefix)
        self._key = key
        self._high = _score(high, "+inf")
        self._start = (_score(low, "-inf"), 0)

    async def _page(self, position: tuple[str, int] | None) -> index.Chunk:
        low, skip = position or self._start
        [page] = await self._pinned.run(
            [("ZRANGE", self._key, low, self._high, "BYSCORE", "LIMIT", skip, index.SEARCH_CHUNK, "WITHSCORES")]
        )
        records = await self._records([member for member, _ in page])
        if len(page) < index.SEARCH_CHUNK:
            return records, None
        last = page[-1][1]
        at_last = sum(1 for _, score in page if score == last)
        return records, (str(int(last)), at_last + (skip if str(int(last)) == low else 0))


async def reader(connection: Connection, shard: Shard, spec: Any, costs: index.Costs) -> _Reader:
    """The chunk reader of the cheapest plan for ``spec`` in ``shard`` (planned on the node
    that serves the shard, and read there)."""
    pinned = shard.pinned(connection)
    plan = index.plan(spec, await Sizes.read(pinned, shard.prefix, spec), costs)
    prefix = shard.prefix
    read: _Reader
    if plan.path == index.POSTINGS:
        first, *others = (posting_key(prefix, kind, term) for kind, term in plan.terms)
        read = PostingReader(pinned, prefix, first, others)
    elif plan.path == index.KEYS:
        read = ScanReader(pinned, prefix, spec.pattern)
    else:
        kind = index.CREATED if plan.path == index.CREATED_RANGE else index.EXPIRES
        read = TimeReader(pinned, prefix, time_key(prefix, kind), plan.low, plan.high)
    read.plan = plan
    return read


@contextlib.asynccontextmanager
async def scattered(streams: list[AsyncGenerator[_T, None]]) -> AsyncIterator[AsyncIterator[_T]]:
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


__all__ = [
    "COSTS",
    "SCAN_COUNT",
    "PostingReader",
    "ScanReader",
    "Shard",
    "Sizes",
    "TimeReader",
    "reader",
    "scattered",
]
