"""The index layer: what every indexed backend shares, held once.

- **Index entries**: the terms a record is indexed under (:func:`postings`,
  :func:`times`): what a save writes, a delete removes and a check expects.
  A backend only decides how a term becomes one of its keys.
- **Queries**: a query is checked and its header matcher compiled once
  (:func:`compile_query`); :func:`select` picks the results among candidates.
- **The planner** (:func:`plan`): from the query and the sizes of its
  candidate sources (posting lists, a key-prefix range, a time range, the
  whole keyspace), given by the backend through :class:`Sizes`, the cheapest
  access path by a cost model whose constants (:class:`Costs`) each backend
  measures for itself.
- **The search loop** (:func:`search_chunks`): candidates read in chunks,
  headers matched, repeats dropped, ``limit`` applied after dropping them,
  resumed where the last chunk ended.

A backend supplies only its primitives: sizes, a reader of one chunk of a
plan's candidates, fetch by id or key, and its write transaction.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._coretypes import PAYLOAD_ERRORS
from .core import QueryMatcher, RecordFields, glob_literal_prefix
from .errors import StorageCorruptionError
from .metrics import MetricsManager
from .model import QuerySpec, StorageQuery, StorageResult, now_micros, validate_query

# -- index entries ------------------------------------------------------------------

#: What a term indexes: the kinds of entries a record has.
TAG, CONTENT_TYPE, CREATED, EXPIRES, UPDATED = range(5)
#: The kinds that are posting lists (a term and the items that have it); the
#: others are time orders (a time and the item).
POSTING_KINDS = (TAG, CONTENT_TYPE)

_U32 = struct.Struct(">I")


def tag_term(key: bytes, value: bytes) -> bytes:
    """The posting-list term of one tag: the key's length (u32, big-endian), the key,
    the value; so no two (key, value) pairs share a term, whatever bytes they hold."""
    return _U32.pack(len(key)) + key + value


def postings(fields: RecordFields) -> list[tuple[int, bytes]]:
    """The posting lists a record belongs to, as (kind, term)."""
    terms = [(TAG, tag_term(key, value)) for key, value in fields.tags]
    terms.append((CONTENT_TYPE, fields.content_type))
    return terms


def times(fields: RecordFields) -> list[tuple[int, int]]:
    """The time orders a record is in, as (kind, microseconds)."""
    entries = [(CREATED, fields.created), (UPDATED, fields.updated)]
    if fields.expires is not None:
        entries.append((EXPIRES, fields.expires))
    return entries


def query_postings(spec: QuerySpec) -> list[tuple[int, bytes]]:
    """The posting lists every result of a query is in, as (kind, term)."""
    terms = [(TAG, tag_term(key, value)) for key, value in spec.tags]
    if spec.content_type is not None:
        terms.append((CONTENT_TYPE, spec.content_type))
    return terms


# -- queries -------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledQuery:
    """A checked query and its header matcher; ``after``: for an ordered query, the
    position its results start strictly after (a page's cursor; see
    :mod:`unistore.ordering`), None: from the first."""

    spec: QuerySpec
    matcher: QueryMatcher
    after: tuple[Any, ...] | None = None

    def limited(self, limit: int | None) -> CompiledQuery:
        """The same query with another ``limit`` (None: none)."""
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, limit=limit))


def compile_query(query: StorageQuery | CompiledQuery) -> CompiledQuery:
    """Check a query and compile its matcher, once: a query compiled already
    (as the manager hands one to its providers) comes back as it is.

    Raises:
        ValidationError: naming the bad field.
    """
    if isinstance(query, CompiledQuery):
        return query
    spec = validate_query(query)
    matcher = QueryMatcher(
        spec.pattern,
        spec.content_type,
        spec.tags,
        spec.created_after,
        spec.created_before,
        spec.expires_after,
        spec.expires_before,
    )
    return CompiledQuery(spec, matcher)


_logger = logging.getLogger(__name__)

#: The counter of damaged records and index entries that searches skipped (see :func:`skipped`).
CORRUPT_RECORDS = "storage_corrupt_records"
#: Set by a caller that must know which damaged records its searches passed over (a
#: migration's verification): the key of each is added to the set.
damage_met: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("damage_met", default=None)


def skipped(what: str, why: object, operation: str = "search") -> None:
    """Report damage that ``operation`` (``"search"``, ``"delete_matching"`` or ``"migrate"``) met and
    passed over (``what``: "the record under key 'k'", or an index entry): an ERROR on
    the ``unistore.index`` logger naming it, and one more in the process-wide
    ``storage_corrupt_records`` counter. `unistore check` reports it too, and
    ``check --repair`` removes it."""
    _logger.error("%s skipped %s: %s; run `unistore check`", operation, what, why)
    MetricsManager.get_instance().counter(CORRUPT_RECORDS, operation=operation)


def _key_text(key: object, name: Callable[[Any], object] | None) -> object:
    """A candidate's key as errors and logs name it: ``name(key)``, or the key itself, as text."""
    named = key if name is None else name(key)
    return bytes(named).decode(errors="replace") if isinstance(named, (bytes, bytearray, memoryview)) else named


def _around_damage(
    pick: Callable[[list[bytes], int, int], list[Any]],
    candidates: Sequence[tuple[Any, bytes]],
    records: list[bytes],
    limit: int | None,
    name: Callable[[Any], object] | None,
    operation: str,
    failed: StorageCorruptionError,
) -> list[Any]:
    """What ``pick(records, start, most)`` (the candidates' records from ``start`` on)
    finds among the candidates, passing over each one it cannot decode (reported by
    :func:`skipped`): the slow path, taken once ``pick`` over all ``records`` has
    ``failed``. ``pick`` raises StorageCorruptionError with ``details["index"]`` naming
    the candidate that failed, and loses what it found before it: that run is picked
    again (it cannot fail), then the rest after the damaged one. A skipped candidate
    never counts against ``limit``."""
    found: list[Any] = []
    start = 0
    while True:
        bad = start + failed.details["index"]
        why = failed.__cause__ if isinstance(failed.__cause__, PAYLOAD_ERRORS) else failed  # the decoder's own words
        found += pick(records[start:bad], start, -1 if limit is None else limit - len(found))
        key = _key_text(candidates[bad][0], name)
        met = damage_met.get()
        if met is not None:
            met.add(str(key))
        skipped(f"the record under key {key!r}, which does not decode", why, operation)
        start = bad + 1
        try:
            return found + pick(records[start:], start, -1 if limit is None else limit - len(found))
        except StorageCorruptionError as exc:
            failed = exc


def _matching(
    compiled: CompiledQuery,
    candidates: Sequence[tuple[Any, bytes]],
    now: int,
    limit: int | None,
    name: Callable[[Any], object] | None,
) -> list[int]:
    """The indexes of the candidates that match, by header only, up to ``limit``;
    a candidate whose header does not parse is passed over (:func:`skipped`)."""
    matching = compiled.matcher.matching
    records = [record for _, record in candidates]
    try:  # one call for the whole batch: the per-candidate work stays in the core
        return matching(records, now, -1 if limit is None else limit)
    except StorageCorruptionError as exc:  # the slow path, only when a candidate is damaged
        return _around_damage(
            lambda run, start, most: [start + hit for hit in matching(run, now, most)],
            candidates,
            records,
            limit,
            name,
            "delete_matching",
            exc,
        )


def select(
    compiled: CompiledQuery,
    candidates: Sequence[tuple[Any, bytes]],
    now: int,
    limit: int | None,
    name: Callable[[Any], object] | None = None,
) -> list[StorageResult[Any]]:
    """The results among ``(key, record)`` candidates, checked by header first
    and decoded only when they match, stopping after ``limit`` (None: no limit).

    A candidate that does not decode is passed over, never counted against
    ``limit``, and reported (:func:`skipped`) under ``name(key)`` (the key itself
    by default): one damaged record never fails a search.
    """
    if limit == 0:
        return []
    results = compiled.matcher.results
    records = [record for _, record in candidates]
    try:  # one call for the whole batch: the per-candidate work, decoding included, stays in the core
        return results(records, now, -1 if limit is None else limit)
    except StorageCorruptionError as exc:  # the slow path, only when a candidate is damaged
        return _around_damage(
            lambda run, _, most: results(run, now, most), candidates, records, limit, name, "search", exc
        )


# -- the planner ---------------------------------------------------------------------


@dataclass(frozen=True)
class Costs:
    """What a backend pays per candidate on each access path, in µs, measured by each
    backend with the native core. The pure twin follows the same plans (its header
    match costs more on every path alike), so both cores give the same plans.

    Attributes:
        scan: a record met walking the records in key order, its header matched.
        fetch: a record reached from an id or key found in an index, its header matched.
        posting: one entry of a posting list, read (and intersected).
        time_entry: one entry of a time order, walked.
    """

    scan: float
    fetch: float
    posting: float
    time_entry: float


POSTINGS = "postings"
"""A plan's path: walk the posting list of one of its terms, AND the others with it."""
KEYS = "keys"
"""A plan's path: the keys that start with its literal (all keys when it is empty)."""
CREATED_RANGE = "created"
"""A plan's path: the items created from its ``low`` to its ``high``."""
EXPIRES_RANGE = "expires"
"""A plan's path: the items expiring from its ``low`` to its ``high``."""


@dataclass(frozen=True)
class Plan:
    """How a search reads its candidates.

    Attributes:
        path: :data:`POSTINGS` (the first of ``terms`` walked, the rest ANDed
            with it), :data:`KEYS` (the keys that start with ``literal``; all of
            them when it is empty), :data:`CREATED_RANGE` or :data:`EXPIRES_RANGE`
            (items by time from ``low`` to ``high``, inclusive, None: unbounded).
        candidates: how many candidates the planner expects.
        cost: what it expects them to cost, in µs.
        walk: for an ordered query, the order a backend walks from the page's
            position instead (``"key"``, ``"created_at"``, ``"updated_at"``),
            reading until it has the page; None: the path's candidates are read
            and sorted.
        sifted: the walk passes over the entries whose items are not in every
            posting list of the query (read first), without reading their records.
        density: for a walk, the share of the entries it walks that the planner expects
            to match (what a backend sizes the walk's reads by).
    """

    path: str
    terms: tuple[tuple[int, bytes], ...] = ()
    literal: bytes = b""
    low: int | None = None
    high: int | None = None
    candidates: float = 0.0
    cost: float = 0.0
    walk: str | None = None
    sifted: bool = False
    density: float = 1.0

    @property
    def repeats(self) -> bool:
        """Whether a concurrent save can move an item ahead of the search on this path
        (a re-save with a later expiry), so that it is met twice."""
        return self.path == EXPIRES_RANGE


class Sizes(Protocol):
    """The sizes of a backend's candidate sources, read for one plan."""

    def posting(self, kind: int, term: bytes) -> int:
        """How many items the posting list of ``term`` holds."""

    def keys(self, literal: bytes, most: int | None) -> int:
        """How many keys start with ``literal`` (every key when empty), counted up to ``most`` (None: all)."""

    def times(self, kind: int, low: int | None, high: int | None, most: int) -> int:
        """How many items the time order ``kind`` holds from ``low`` to ``high``, counted up to ``most``."""


def _within(budget: float, each: float) -> int:
    """How many candidates at ``each`` µs fit in ``budget`` µs, plus one: a count
    that reaches it means the path costs more than the budget."""
    return math.floor(budget / each) + 1


def plan(spec: QuerySpec, sizes: Sizes, costs: Costs, ceiling: float = math.inf) -> Plan:
    """The cheapest way to read the candidates of ``spec``.

    The whole keyspace bounds every plan. A query's posting lists are walked
    from the smallest; each other one is read and ANDed with it only when the
    fetches it saves (assuming it is independent of the rest) cost more than
    reading it. A key-prefix or time range is counted only up to what the best
    plan so far costs, or ``ceiling`` (µs: what the caller can do otherwise, as an
    ordered walk) if that is less, so sizing never costs more than the plan it might
    replace; a range counted to the ceiling costs more than it.
    """
    scan, fetch = costs.scan, costs.fetch
    everything = sizes.keys(b"", None)
    best = Plan(KEYS, candidates=everything, cost=everything * scan)
    terms = query_postings(spec)
    if terms:
        counted = sorted(((sizes.posting(kind, term), (kind, term)) for kind, term in terms), key=lambda s: s[0])
        size, first = counted[0]
        chosen, candidates, cost = [first], float(size), size * costs.posting
        for size, term in counted[1:]:
            kept = candidates * min(size / max(everything, 1), 1.0)
            if (candidates - kept) * fetch > size * costs.posting:
                chosen.append(term)
                candidates, cost = kept, cost + size * costs.posting
        cost += candidates * fetch
        if cost <= best.cost:
            best = Plan(POSTINGS, tuple(chosen), candidates=candidates, cost=cost)
    literal = glob_literal_prefix(spec.pattern) if spec.pattern is not None else b""
    if literal:
        count = sizes.keys(literal, _within(min(best.cost, ceiling), scan))
        if count * scan <= best.cost:  # at equal cost, the narrower range
            best = Plan(KEYS, literal=literal, candidates=count, cost=count * scan)
    for kind, path, low, high in (
        (CREATED, CREATED_RANGE, spec.created_after, spec.created_before),
        (EXPIRES, EXPIRES_RANGE, spec.expires_after, spec.expires_before),
    ):
        if low is None and high is None:
            continue
        each = costs.time_entry + fetch
        count = sizes.times(kind, low, high, _within(min(best.cost, ceiling), each))
        if count * each < best.cost:
            best = Plan(path, low=low, high=high, candidates=count, cost=count * each)
    return best


def plan_ordered(
    spec: QuerySpec,
    sizes: Sizes,
    costs: Costs,
    items: Callable[[], int],
    walks: Mapping[str, float],
    sort_cost: float,
    sift_cost: float | None = None,
) -> Plan:
    """The plan of ``spec``; for an ordered query with a limit, whether to walk its order
    instead (:attr:`Plan.walk`), from the page's position until it has the limit.

    The walk meets matches at the density the query's posting lists give (taken as
    independent) among ``items()`` items, each entry walked costing ``walks[field]`` µs (an
    order the backend cannot walk is not in ``walks``); it is weighed against every
    candidate of :func:`plan`'s path read and ordered by its header, at ``sort_cost`` µs
    each on top. No range is sized past what the walk would cost (:func:`plan`'s ``ceiling``).

    A backend that can sift a time walk (:attr:`Plan.sifted`) gives ``sift_cost``, what
    each id of the query's posting lists costs it; a sifted walk then costs those ids,
    a time entry per entry walked and a fetch per result, and is chosen where that is less.
    """
    order = spec.order
    if order is None or spec.limit is None or order.field not in walks:
        return plan(spec, sizes, costs)
    everything = max(items(), 1)
    density = 1.0
    postings = [sizes.posting(kind, term) for kind, term in query_postings(spec)]
    for size in postings:
        density *= min(size / everything, 1.0)
    density = max(density, 1 / everything)
    entries = spec.limit / density
    walked = entries * walks[order.field]
    sifted = math.inf
    if sift_cost is not None and postings and order.field != "key":  # (a key order holds no ids to sift by)
        sifted = sum(postings) * sift_cost + entries * costs.time_entry + spec.limit * costs.fetch
    best = plan(spec, sizes, costs, ceiling=min(walked, sifted))
    if min(walked, sifted) < best.cost + best.candidates * sort_cost:
        literal = glob_literal_prefix(spec.pattern) if spec.pattern is not None and order.field == "key" else b""
        return dataclasses.replace(best, walk=order.field, literal=literal, density=density, sifted=sifted < walked)
    return best


# -- the search loop -----------------------------------------------------------------

#: Candidates a backend reads per chunk of a search (per read transaction, round trip or
#: slice): enough to amortise a hop, few enough that a chunk never holds a reader long.
SEARCH_CHUNK = 256

#: What a chunk reader returns: ``(key, record)`` candidates, and where to resume
#: (None: the candidates are exhausted).
Chunk = tuple[Sequence[tuple[Any, bytes]], Any]


def search_chunks(
    compiled: CompiledQuery,
    read: Callable[[Any], Chunk],
    repeats: bool = False,
    name: Callable[[Any], object] | None = None,
) -> Iterator[list[StorageResult[Any]]]:
    """The results of a query, chunk by chunk.

    Args:
        compiled: the query.
        read: ``read(position)`` reads the chunk of candidates that starts at
            ``position`` (None: the first).
        repeats: whether the path may meet one item twice (:attr:`Plan.repeats`;
            on Redis, every SCAN-family path); then what was yielded is
            remembered and met again is dropped, and ``limit`` is applied after
            dropping, so a repeat never takes the place of an item not yet met.
        name: names a candidate's key when it is reported as damaged
            (:func:`skipped`): a candidate that does not decode is passed over.
    """
    yield from _chunks(_Loop(compiled.spec.limit, _results(compiled, repeats, name)), read)


def search_chunks_async(
    compiled: CompiledQuery,
    read: Callable[[Any], Awaitable[Chunk]],
    repeats: bool = False,
    name: Callable[[Any], object] | None = None,
) -> AsyncGenerator[list[StorageResult[Any]], None]:
    """:func:`search_chunks` for a backend whose reads are awaited."""
    return _chunks_async(_Loop(compiled.spec.limit, _results(compiled, repeats, name)), read)


def matching_chunks_async(
    compiled: CompiledQuery, read: Callable[[Any], Awaitable[Chunk]], name: Callable[[Any], object] | None = None
) -> AsyncGenerator[list[tuple[Any, bytes]], None]:
    """:func:`matching_chunks` for a backend whose reads are awaited (a path with
    repeats gives them too: the caller drops them)."""
    return _chunks_async(_Loop(compiled.spec.limit, _matches(compiled, name)), read)


def matching_chunks(
    compiled: CompiledQuery, read: Callable[[Any], Chunk], name: Callable[[Any], object] | None = None
) -> Iterator[list[tuple[Any, bytes]]]:
    """The ``(key, record)`` candidates that match a query, chunk by chunk, undecoded
    (what a delete needs). For a reader that no writer can overtake (inside a write
    transaction, or over a snapshot): the path meets no item twice. A candidate
    whose header does not parse is passed over (:func:`skipped`).
    """

    yield from _chunks(_Loop(compiled.spec.limit, _matches(compiled, name)), read)


def _matches(
    compiled: CompiledQuery, name: Callable[[Any], object] | None
) -> Callable[[Sequence[tuple[Any, bytes]], int, int | None], list[tuple[Any, bytes]]]:
    """What the loop picks from a chunk for a delete: the matching candidates, undecoded."""
    return lambda found, now, most: [found[index] for index in _matching(compiled, found, now, most, name)]


def _results(
    compiled: CompiledQuery, repeats: bool, name: Callable[[Any], object] | None
) -> Callable[[Sequence[tuple[Any, bytes]], int, int | None], list[StorageResult[Any]]]:
    """What the loop picks from a chunk: its results, without the repeats if the path has them."""
    if not repeats:
        return lambda found, now, most: select(compiled, found, now, most, name)
    seen: set[Any] = set()

    def fresh(found: Sequence[tuple[Any, bytes]], now: int, most: int | None) -> list[StorageResult[Any]]:
        hits = [hit for hit in select(compiled, found, now, None, name) if hit.item.metadata.id not in seen][:most]
        seen.update(hit.item.metadata.id for hit in hits)
        return hits

    return fresh


_END = object()  # a position: nothing more to read


class _Loop:
    """The one search loop's decisions, whoever reads the chunks: ``pick(candidates,
    now, most)`` a chunk's hits, count them against ``limit``, say where to resume."""

    __slots__ = ("_pick", "_remaining", "start")

    def __init__(self, limit: int | None, pick: Callable[..., list[Any]]) -> None:
        self._pick = pick
        self._remaining = limit
        self.start: Any = _END if limit == 0 else None

    def take(self, candidates: Sequence[tuple[Any, bytes]], position: Any) -> tuple[list[Any], Any]:
        """The hits of a chunk, and where to read next (:data:`_END`: nowhere)."""
        hits = self._pick(candidates, now_micros(), self._remaining)
        if self._remaining is not None:
            self._remaining -= len(hits)
        return hits, _END if position is None or self._remaining == 0 else position


def _chunks(loop: _Loop, read: Callable[[Any], Chunk]) -> Iterator[list[Any]]:
    position = loop.start
    while position is not _END:
        hits, position = loop.take(*read(position))
        if hits:
            yield hits


async def _chunks_async(loop: _Loop, read: Callable[[Any], Awaitable[Chunk]]) -> AsyncGenerator[list[Any], None]:
    position = loop.start
    while position is not _END:
        hits, position = loop.take(*await read(position))
        if hits:
            yield hits


__all__ = [
    "CONTENT_TYPE",
    "CORRUPT_RECORDS",
    "CREATED",
    "CREATED_RANGE",
    "EXPIRES",
    "EXPIRES_RANGE",
    "KEYS",
    "POSTINGS",
    "POSTING_KINDS",
    "TAG",
    "UPDATED",
    "Chunk",
    "CompiledQuery",
    "Costs",
    "Plan",
    "Sizes",
    "compile_query",
    "matching_chunks",
    "matching_chunks_async",
    "plan",
    "plan_ordered",
    "postings",
    "query_postings",
    "search_chunks",
    "search_chunks_async",
    "select",
    "skipped",
    "tag_term",
    "times",
]
