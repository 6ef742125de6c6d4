"""How a search reads a namespace shard: the sizes its planner weighs, the readers of each
access path, the walks of its orders, and the scatter that reads every shard at once.

Each reader walks one shard on the node that serves it (:class:`~.connection.Pinned`):
a SCAN or SSCAN cursor, or a position in a sorted set, means something only there. When
that node stops serving the shard (a failover, a finished migration) the walk starts again
on the new owner and the search loop drops what it meets twice, so a search either yields
every match once or fails with :class:`~unistore.StorageConnectionError`; it never ends
early without saying so.

An ordered search with a limit (a page) may instead walk one of the shard's orders (by
key, creation or update time) from the page's position (:class:`KeyWalk`,
:class:`TimeWalk`), a chunk at a time, each chunk's records fetched with MGET and matched
by their headers, until it has the page: where the planner finds that cheaper than
reading every candidate of a posting set and ordering them by their headers
(:func:`planned`). A walk's chunk starts strictly after the last entry of the one before,
by value, not by a cursor: it reads the same on whichever node serves the shard, so its
commands are simply routed to the owner of the moment, and no command reads a whole set.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from ... import index, ordering
from ..._coretypes import HEADER_SIZE
from . import scripts
from .connection import Connection, NodeChanged, Pinned
from .layout import CREATED, KEY_ORDER, PROBE, UPDATED, posting_key, record_key, scan_pattern, time_key

_T = TypeVar("_T")

#: What a candidate costs on each path, in µs, on loopback (docs/benchmarks.md):
#: SCAN visits a key for about half a microsecond of server time; a candidate
#: reached through a set costs its share of an SSCAN page and of an MGET.
COSTS = index.Costs(scan=0.5, fetch=9.0, posting=1.0, time_entry=1.0)
#: Keys a SCAN visits per call.
SCAN_COUNT = 1000
#: What an ordered walk pays per entry, by the order it walks (µs, as COSTS): an entry of
#: the key, creation or update order read, and the record it names fetched.
WALKS = dict.fromkeys(("key", "created_at", "updated_at"), COSTS.time_entry + COSTS.fetch)
#: What ordering one candidate by its header costs on top of reading it (µs).
SORT_COST = 0.5
#: Entries the first chunk of a walk reads at least; it reads what should hold the limit,
#: and the page's position (met again: the walk starts at it), at the plan's density and
#: half again (the matches of a chunk vary). Each chunk after reads twice as many as the one
#: before, up to index.SEARCH_CHUNK: a page rarely reads a second chunk, or much past itself.
WALK_CHUNK = 16
WALK_MARGIN = 1.5


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

    def __init__(
        self, postings: dict[tuple[int, bytes], int], keys: int, times: dict[int, int], items: int, walkable: bool
    ) -> None:
        self._postings = postings
        self._keys = keys
        self._times = times
        #: How many items the shard holds (read for an ordered query, or one without a pattern; else 0).
        self.items = items
        #: Whether the order an ordered query names may be walked: it holds every item (a
        #: namespace written before the key and update orders lacks them until check --repair),
        #: and, for a time order, only scores that hold their µs exactly (within ±2**53).
        self.walkable = walkable

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
        counted = everything or spec.order is not None  # (an ordered walk's planning needs the count)
        commands: list[tuple[Any, ...]] = [("SCARD", posting_key(prefix, kind, term)) for kind, term in terms]
        commands += [
            ("ZCOUNT", time_key(prefix, kind), _score(low, "-inf"), _score(high, "+inf")) for kind, low, high in bounds
        ]
        if counted:
            commands.append(("ZCARD", time_key(prefix, index.CREATED)))  # every item has its creation time
        walked = _walked_checks(prefix, spec.order)
        commands += walked
        commands.append(("DBSIZE",))
        while True:
            try:
                replies = await pinned.run(commands, keyless=True)  # DBSIZE: of the node that serves the shard
                break
            except NodeChanged as moved:
                await pinned.restart(moved)
        keyspace = replies.pop()
        checks = [int(replies.pop()) for _ in walked][::-1]
        items = int(replies.pop()) if counted else 0
        walkable = _walkable(spec.order, checks, items)
        # What a SCAN costs, counted in keys visited (the planner's unit): every key of
        # the database, and, when no pattern narrows what it yields, each of the shard's
        # records fetched, at what a fetch costs in visits. (A pattern is taken to yield few.)
        fetched = items * COSTS.fetch / COSTS.scan if everything else 0
        return cls(
            dict(zip(terms, replies, strict=False)),
            int(keyspace) + math.ceil(fetched),
            {kind: int(count) for (kind, _, _), count in zip(bounds, replies[len(terms) :], strict=True)},
            items,
            walkable,
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


#: Past this many µs either way a score (a double) no longer holds a time exactly (the year 2255).
EXACT = 2**53
#: The order each ordered query walks, by its field: the sorted set's part of the shard's keys.
_ORDERS = {"key": KEY_ORDER, "created_at": CREATED, "updated_at": UPDATED}


def _walked_checks(prefix: bytes, order: Any) -> list[tuple[Any, ...]]:
    """The commands that tell whether the order ``order`` names may be walked (see
    :attr:`Sizes.walkable`): its size (the creation order holds every item by definition),
    and, for a time order, how many scores lie past :data:`EXACT` either way."""
    if order is None:
        return []
    key = prefix + _ORDERS[order.field]
    commands: list[tuple[Any, ...]] = [] if order.field == "created_at" else [("ZCARD", key)]
    if order.field != "key":
        commands += [("ZCOUNT", key, "-inf", f"({-EXACT}"), ("ZCOUNT", key, f"({EXACT}", "+inf")]
    return commands


def _walkable(order: Any, checks: list[int], items: int) -> bool:
    """What :func:`_walked_checks`' replies say (see :attr:`Sizes.walkable`)."""
    if order is None:
        return False
    if order.field != "created_at" and checks.pop(0) != items:
        return False
    return not any(checks)


def _score(micros: int | None, unbounded: str) -> str:
    return unbounded if micros is None else str(micros)


_RESTART = object()  # a reader's position: its walk starts again (on the shard's owner now)
_EMPTY = object()  # what a stream that ends at once gives first (see ahead)


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


async def planned(connection: Connection, shard: Shard, spec: Any) -> index.Plan:
    """The cheapest plan for ``spec`` in ``shard``, planned on the node that serves it; for
    an ordered query with a limit, whether to walk its order instead (:attr:`index.Plan.walk`,
    :func:`unistore.index.plan_ordered`)."""
    sizes = await Sizes.read(shard.pinned(connection), shard.prefix, spec)
    return index.plan_ordered(spec, sizes, COSTS, lambda: sizes.items, WALKS if sizes.walkable else {}, SORT_COST)


async def reader(
    connection: Connection, shard: Shard, spec: Any, costs: index.Costs, plan: index.Plan | None = None
) -> _Reader:
    """The chunk reader of ``plan``'s path in ``shard`` (None: the cheapest plan for ``spec``,
    planned on the node that serves the shard), read on the node that serves it."""
    pinned = shard.pinned(connection)
    if plan is None:
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


class _Walk(ABC):
    """A chunk reader (``read(position)``, as :mod:`unistore.index`'s loop calls it) of one
    of a shard's orders: entries by range, each chunk's records by MGET, routed to the
    node that serves the shard now, ``first`` entries in the first chunk (see :data:`WALK_CHUNK`)."""

    def __init__(self, connection: Connection, shard: Shard, order: bytes, descending: bool, first: int) -> None:
        self._connection, self._shard, self._order, self._descending = connection, shard, order, descending
        self._size = first

    async def __call__(self, position: Any) -> index.Chunk:
        size = self._size
        self._size = min(2 * size, index.SEARCH_CHUNK)
        entries, position = await self._entries(position, size)
        if not entries:
            return [], None
        prefix = self._shard.prefix
        records = await self._connection.call(
            self._shard.slot, "MGET", *(record_key(prefix, member) for member, _ in entries)
        )
        # A record saved again between the two reads is no longer where its entry was: it
        # is passed over here (its new entry places it), as a change during a walk may be.
        found = [
            (member, record)
            for (member, score), record in zip(entries, records, strict=True)
            if record is not None and self._agrees(score, record)
        ]
        return found, position

    @abstractmethod
    async def _entries(self, position: Any, size: int) -> tuple[list[tuple[bytes, Any]], Any]:
        """Up to ``size`` entries (member, score) from ``position`` (None: the first) in the
        walk's order, and where the next chunk starts (None: the walk is over)."""

    def _agrees(self, score: Any, record: bytes) -> bool:
        """Whether ``record`` is still at the entry of score ``score`` (a key order: always)."""
        return True


class KeyWalk(_Walk):
    """Walks a shard's key order (``ZRANGE BYLEX``) over the keys that start with ``literal``,
    from the key ``start`` on (included: another provider's item under that key may be the
    page's position; the search drops what is not past it)."""

    def __init__(
        self,
        connection: Connection,
        shard: Shard,
        literal: bytes,
        descending: bool,
        start: bytes | None,
        first: int,
    ) -> None:
        super().__init__(connection, shard, shard.prefix + KEY_ORDER, descending, first)
        # From ``low`` (included) to ``high`` (excluded): a key is UTF-8, which holds no
        # 0xFF byte, so every key that starts with ``literal`` sorts before literal + 0xFF.
        low, high = literal, literal + b"\xff"
        if start is not None:
            if descending:
                high = min(high, start + b"\x00")  # (a key up to ``start``: before start + 0x00)
            else:
                low = max(low, start)
        self._first = (low, high)

    async def _entries(self, position: tuple[bytes, bytes] | None, size: int) -> tuple[list[tuple[bytes, Any]], Any]:
        low, high = position or self._first
        bounds = (b"(" + high, b"[" + low, "BYLEX", "REV") if self._descending else (b"[" + low, b"(" + high, "BYLEX")
        members = await self._connection.call(self._shard.slot, "ZRANGE", self._order, *bounds, "LIMIT", 0, size)
        entries = [(member, None) for member in members]
        if len(members) < size:  # the order's end, or the literal's
            return entries, None
        return entries, (low, members[-1]) if self._descending else (members[-1] + b"\x00", high)


class TimeWalk(_Walk):
    """Walks a shard's creation or update order by (time, key) with :data:`scripts.WALK`,
    from ``start`` (a page's position: its time and key, the entry included, as in
    :class:`KeyWalk`) or else from ``bound`` (the query's creation bound the walk begins
    at, its whole µs included), to ``stop`` (the bound it ends at), each chunk strictly
    after the last entry of the chunk before."""

    def __init__(
        self,
        connection: Connection,
        shard: Shard,
        kind: int,
        descending: bool,
        start: tuple[Any, ...] | None,
        bound: int | None,
        stop: int | None,
        first: int,
    ) -> None:
        super().__init__(connection, shard, time_key(shard.prefix, kind), descending, first)
        self._time = ordering.record_time("created_at" if kind == index.CREATED else "updated_at")
        unbounded = "+inf" if descending else "-inf"
        if start is not None:
            self._first: tuple[Any, bytes, bytes] = (start[0], start[1], b"0")
        else:
            self._first = (_score(bound, unbounded), b"", b"0")
        self._stop = stop

    async def _entries(
        self, position: tuple[Any, bytes, bytes] | None, size: int
    ) -> tuple[list[tuple[bytes, Any]], Any]:
        score, member, strict = position or self._first
        down = self._descending
        reply = await self._connection.script(
            self._shard.slot, scripts.WALK, [self._order], [score, member, strict, b"1" if down else b"0", size]
        )
        entries = list(zip(reply[::2], reply[1::2], strict=True))
        if down:
            entries.reverse()
        stop = self._stop
        inside = [
            entry for entry in entries if stop is None or (float(entry[1]) >= stop if down else float(entry[1]) <= stop)
        ]
        if len(inside) < size:  # the order's end, or the bound's
            return inside, None
        last_member, last_score = inside[-1]
        return inside, (last_score, last_member, b"1")

    def _agrees(self, score: Any, record: bytes) -> bool:
        # (A record too short for a header is damage, which the search reports.)
        return len(record) < HEADER_SIZE or self._time(record) == int(float(score))


def walker(connection: Connection, shard: Shard, compiled: index.CompiledQuery, plan: index.Plan) -> _Walk:
    """The walk of ``plan`` (one with :attr:`~unistore.index.Plan.walk`) in ``shard``, from
    the query's position on."""
    spec = compiled.spec
    order = spec.order
    assert order is not None
    assert spec.limit is not None
    position, descending = compiled.after, order.descending
    wanted = spec.limit + (position is not None)
    first = min(max(WALK_CHUNK, math.ceil(wanted / plan.density * WALK_MARGIN)), index.SEARCH_CHUNK)
    if plan.walk == "key":
        start = None if position is None else position[0]
        return KeyWalk(connection, shard, plan.literal, descending, start, first)
    if plan.walk == "created_at":
        low, high = spec.created_after, spec.created_before
        bound, stop = (high, low) if descending else (low, high)
        return TimeWalk(connection, shard, index.CREATED, descending, position, bound, stop, first)
    return TimeWalk(connection, shard, index.UPDATED, descending, position, None, None, first)


@contextlib.asynccontextmanager
async def ahead(streams: list[AsyncGenerator[_T, None]]) -> AsyncIterator[list[AsyncIterator[_T]]]:
    """``streams``, each with its first element read already, all at once (a merge of
    ordered streams then begins with one round of reads, not one after another). On
    leaving, every stream is closed."""
    resumed: list[AsyncGenerator[_T, None]] = []
    try:
        firsts = await asyncio.gather(*(anext(stream, _EMPTY) for stream in streams), return_exceptions=True)
        for first in firsts:  # (every read has ended: none is left running)
            if isinstance(first, BaseException):
                raise first
        resumed = [_resumed(first, stream) for first, stream in zip(firsts, streams, strict=True)]
        yield list(resumed)
    finally:
        for stream in [*resumed, *streams]:
            await stream.aclose()


async def _resumed(first: Any, stream: AsyncGenerator[_T, None]) -> AsyncGenerator[_T, None]:
    if first is _EMPTY:
        return
    yield first
    async for following in stream:
        yield following


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
    "SORT_COST",
    "WALKS",
    "WALK_CHUNK",
    "WALK_MARGIN",
    "KeyWalk",
    "PostingReader",
    "ScanReader",
    "Shard",
    "Sizes",
    "TimeReader",
    "TimeWalk",
    "ahead",
    "planned",
    "reader",
    "scattered",
    "walker",
]
