"""Ordered results, pages and cursors: what every provider and the manager share.

- **Order.** A query's ``order_by`` (:class:`~unistore.model.Order`) sorts results by a
  *sort key*: ``(key, content type)`` for ``"key"``, ``(time, key, content type)`` for
  ``"created_at"`` and ``"updated_at"`` (times in µs, keys and content types as UTF-8,
  compared as bytes), the whole key reversed for a descending order. The order is total:
  no two items share a sort key, even across providers (one provider holds one item per
  key; the manager's providers differ by content type).
- **Positions.** A page's position is the sort key of the last result it gave; the next
  page starts strictly after it (:attr:`~unistore.index.CompiledQuery.after`), so an item
  that stays where it is is met exactly once however the store changes around it.
- **Cursors.** A cursor carries a position, how many results the walk has given (for
  ``limit``), a fingerprint of the query and a checksum, packed and base64url-encoded
  (:func:`encode_cursor`, :func:`decode_cursor`): one made for another query, or altered
  by a byte, is refused.
- **Merging.** The manager merges its providers' ordered streams (:func:`merge`), never
  collecting and sorting them whole.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import heapq
import operator
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import msgpack

from ._coretypes import HEADER_OFFSETS, HEADER_SIZE
from .errors import ValidationError
from .index import CompiledQuery, compile_query, select
from .model import (
    MAX_LIMIT,
    MAX_MICROS,
    MIN_MICROS,
    Order,
    QuerySpec,
    StorageItem,
    StoragePage,
    StorageQuery,
    StorageResult,
    datetime_to_micros,
    now_micros,
)

#: The order of a page whose query names none.
DEFAULT_ORDER = Order("key", False)
#: A position in an order: a result's sort key (:func:`sort_key`).
Position = tuple[Any, ...]

_CURSOR_VERSION = 1
_FINGERPRINT_SIZE = 8
_CHECKSUM_SIZE = 8
_CHECKSUM_PERSON = b"unistore-cursor"


def sort_key(order: Order) -> Callable[[StorageItem[Any]], Position]:
    """The sort key of an item in ``order`` (ascending; a descending order reverses it)."""
    if order.field == "key":
        return lambda item: (item.metadata.key.encode(), item.metadata.content_type.encode())
    field_name = order.field
    return lambda item: (
        datetime_to_micros(getattr(item.metadata, field_name)),
        item.metadata.key.encode(),
        item.metadata.content_type.encode(),
    )


def result_key(order: Order) -> Callable[[StorageResult[Any]], Position]:
    """:func:`sort_key` of a result's item."""
    of_item = sort_key(order)
    return lambda result: of_item(result.item)


def after(order: Order, position: Position) -> Callable[[Position], bool]:
    """Whether a sort key comes strictly after ``position`` in ``order``."""
    if order.descending:
        return lambda key: key < position
    return lambda key: key > position


def unordered(query: StorageQuery | CompiledQuery) -> CompiledQuery:
    """``query`` compiled, without its order and position: what a count, or a provider
    that orders its matches itself, reads.

    Raises:
        ValidationError: a bad query field.
    """
    compiled = compile_query(query)
    if compiled.spec.order is None and compiled.after is None:
        return compiled
    return dataclasses.replace(compiled, spec=dataclasses.replace(compiled.spec, order=None), after=None)


def every_match(compiled: CompiledQuery) -> CompiledQuery:
    """What a provider that orders its matches itself (:func:`pick`) reads first:
    every match, in no order, without the limit."""
    return unordered(compiled).limited(None)


_TIME = struct.Struct("<q")
_NAME_LENGTHS = struct.Struct("<II")  # the key's length, then the content type's
_TIME_OFFSETS = {"created_at": HEADER_OFFSETS["created"], "updated_at": HEADER_OFFSETS["updated"]}
_NAME_LENGTHS_OFFSET = HEADER_OFFSETS["key_length"]


def record_position(order: Order) -> Callable[[bytes], Position]:
    """:func:`sort_key` read from an encoded record (its header's time, then its key and
    content type): no payload is decoded to order candidates."""

    def names(record: bytes) -> tuple[bytes, bytes]:
        key_length, type_length = _NAME_LENGTHS.unpack_from(record, _NAME_LENGTHS_OFFSET)
        key_end = HEADER_SIZE + key_length
        return bytes(record[HEADER_SIZE:key_end]), bytes(record[key_end : key_end + type_length])

    if order.field == "key":
        return names
    moment = record_time(order.field)
    return lambda record: (moment(record), *names(record))


def record_time(field: str) -> Callable[[bytes], int]:
    """The reader of an encoded record's ``"created_at"`` or ``"updated_at"`` (µs), from its header."""
    offset = _TIME_OFFSETS[field]
    moment = _TIME.unpack_from
    return lambda record: int(moment(record, offset)[0])


def pick(
    compiled: CompiledQuery, candidates: Iterable[tuple[Any, bytes]], name: Callable[[Any], object] | None = None
) -> list[StorageResult[Any]]:
    """The results of an ordered query among ``candidates``: ``(key, record)`` pairs whose
    headers matched it (each item once, as :func:`unistore.index.matching_chunks` gives
    them). They are ordered by their records' headers and only the results are decoded,
    from the query's position (if any) up to its limit; a record that does not decode is
    passed over (:func:`unistore.index.skipped`) and the next one takes its place."""
    spec = compiled.spec
    assert spec.order is not None
    position = record_position(spec.order)
    ranked = [(position(record), key, record) for key, record in candidates]
    if compiled.after is not None:
        later = after(spec.order, compiled.after)
        ranked = [entry for entry in ranked if later(entry[0])]
    ranked.sort(key=operator.itemgetter(0), reverse=spec.order.descending)
    plain = every_match(compiled)
    wanted = len(ranked) if spec.limit is None else spec.limit
    results: list[StorageResult[Any]] = []
    start = 0
    while start < len(ranked) and len(results) < wanted:
        end = start + wanted - len(results)
        chosen = [(key, record) for _, key, record in ranked[start:end]]
        results += select(plain, chosen, now_micros(), None, name)
        start = end
    return results


async def merge(
    streams: Sequence[AsyncIterator[StorageResult[Any]]], order: Order, limit: int | None
) -> AsyncIterator[StorageResult[Any]]:
    """The ordered ``streams`` (each already in ``order``) as one ordered stream, up to
    ``limit``: the head of each stream is held, the next result is the first of them."""
    key = result_key(order)
    sign = -1 if order.descending else 1
    heads: list[tuple[_Ranked, int, StorageResult[Any]]] = []
    for number, stream in enumerate(streams):
        first = await anext(stream, None)
        if first is not None:
            heads.append((_Ranked(key(first), sign), number, first))
    heapq.heapify(heads)
    given = 0
    while heads and (limit is None or given < limit):
        _, number, result = heads[0]
        yield result
        given += 1
        following = await anext(streams[number], None)
        if following is None:
            heapq.heappop(heads)
        else:
            heapq.heapreplace(heads, (_Ranked(key(following), sign), number, following))


@dataclasses.dataclass(frozen=True)
class _Ranked:
    """A sort key that compares in the order's direction (a heap pops its smallest)."""

    key: Position
    sign: int

    def __lt__(self, other: _Ranked) -> bool:
        return self.key < other.key if self.sign > 0 else self.key > other.key


# -- pages and cursors ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PageRequest:
    """A checked ``page`` call: the query to run (ordered, from the cursor's position, for
    one result more than the page holds, to know whether another page follows), and what
    the page's cursor needs."""

    compiled: CompiledQuery
    size: int
    served: int
    fingerprint: bytes


def page_request(query: StorageQuery | CompiledQuery, size: object, cursor: object) -> PageRequest:
    """Check a ``page`` call's arguments.

    Raises:
        ValidationError: a bad query field, ``size``, or a cursor that is malformed,
            altered, or made for another query.
    """
    compiled = compile_query(query)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size < MAX_LIMIT:
        raise ValidationError(f"size must be an int from 1 to 2**63 - 2, got {size!r}")
    order = compiled.spec.order or DEFAULT_ORDER
    spec = dataclasses.replace(compiled.spec, order=order)
    fingerprint = _fingerprint(spec)
    position, served = (None, 0) if cursor is None else decode_cursor(cursor, fingerprint, order)
    wanted = size + 1 if spec.limit is None else min(size + 1, spec.limit - served)
    run = dataclasses.replace(compiled, spec=dataclasses.replace(spec, limit=max(wanted, 0)), after=position)
    return PageRequest(run, size, served, fingerprint)


def finish_page(request: PageRequest, results: list[StorageResult[Any]]) -> StoragePage[Any]:
    """The page of a request's results: the first ``size``, and the cursor of the rest."""
    page = results[: request.size]
    if len(results) <= request.size:
        return StoragePage(page, None)
    order = request.compiled.spec.order
    assert order is not None
    position = result_key(order)(page[-1])
    return StoragePage(page, encode_cursor(position, request.served + len(page), request.fingerprint))


def _fingerprint(spec: QuerySpec) -> bytes:
    """What identifies a query to its cursors: every criterion, the order and the limit."""
    assert spec.order is not None
    fields = [
        spec.pattern,
        spec.content_type,
        [list(pair) for pair in spec.tags],
        spec.created_after,
        spec.created_before,
        spec.expires_after,
        spec.expires_before,
        spec.limit,
        spec.order.field,
        spec.order.descending,
    ]
    return hashlib.blake2b(msgpack.packb(fields), digest_size=_FINGERPRINT_SIZE).digest()


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_CHECKSUM_SIZE, person=_CHECKSUM_PERSON).digest()


def encode_cursor(position: Position, served: int, fingerprint: bytes) -> str:
    """The cursor of a walk at ``position`` that has given ``served`` results (URL-safe)."""
    body = msgpack.packb([_CURSOR_VERSION, fingerprint, served, list(position)], use_bin_type=True)
    return base64.urlsafe_b64encode(body + _checksum(body)).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: object, fingerprint: bytes, order: Order) -> tuple[Position, int]:
    """The position and the count of given results that ``cursor`` carries.

    Raises:
        ValidationError: ``cursor`` is not a str this module made, was altered, or was
            made for a query other than the one ``fingerprint`` identifies.
    """
    if not isinstance(cursor, str):
        raise ValidationError(f"cursor must be a str (a page's next), got {type(cursor).__name__}")
    shown = str.__getitem__(cursor, slice(0, 40))
    try:
        raw = base64.urlsafe_b64decode(str.encode(cursor, "ascii") + b"=" * (-len(cursor) % 4))
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raw = b""
    body, checksum = raw[:-_CHECKSUM_SIZE], raw[-_CHECKSUM_SIZE:]
    if len(raw) <= _CHECKSUM_SIZE or _checksum(body) != checksum:
        raise ValidationError(f"cursor {shown!r} is not a cursor of a page (damaged or altered)")
    try:
        version, found, served, position = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        version = found = served = position = None
    if version != _CURSOR_VERSION:
        raise ValidationError(f"cursor {shown!r} is not a cursor of this version of unistore")
    if found != fingerprint:
        raise ValidationError("cursor was made for another query (its criteria, order or limit differ)")
    if not _well_formed(position, served, order):
        raise ValidationError(f"cursor {shown!r} is not a cursor of a page (its position does not parse)")
    return tuple(position), served


def _well_formed(position: object, served: object, order: Order) -> bool:
    """Whether a decoded cursor holds a position of ``order`` and a count of results."""
    if type(served) is not int or not 0 <= served <= MAX_LIMIT or type(position) is not list:
        return False
    times = [] if order.field == "key" else position[:1]
    names = position[len(times) :]
    return (
        len(names) == 2
        and all(type(name) is bytes for name in names)
        and all(type(moment) is int and MIN_MICROS <= moment <= MAX_MICROS for moment in times)
        and len(times) == (0 if order.field == "key" else 1)
    )


__all__ = [
    "DEFAULT_ORDER",
    "PageRequest",
    "Position",
    "after",
    "decode_cursor",
    "encode_cursor",
    "every_match",
    "finish_page",
    "merge",
    "page_request",
    "pick",
    "record_position",
    "record_time",
    "result_key",
    "sort_key",
    "unordered",
]
