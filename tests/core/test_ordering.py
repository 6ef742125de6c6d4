"""Orders, positions and cursors (unistore.ordering): what every provider and the manager
share, tested on its own; the providers' orders are the conformance suite's."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import UTC
from unistore import StorageItem, StorageMetadata, StorageQuery, StorageResult, ValidationError, ordering
from unistore.model import MAX_LIMIT, Order
from unistore.providers import MemoryStorageProvider

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def result(key: str, content_type: str = "t", created: int = 0, updated: int = 0) -> StorageResult[Any]:
    """A result whose item has these key, content type and times (µs after EPOCH)."""
    metadata = StorageMetadata(
        id=uuid.uuid4(),
        key=key,
        content_type=content_type,
        created_at=EPOCH + timedelta(microseconds=created),
        updated_at=EPOCH + timedelta(microseconds=updated),
        expires_at=None,
        tags={},
    )
    return StorageResult(StorageItem(None, metadata))


def keys(results: list[StorageResult[Any]]) -> list[tuple[str, str]]:
    return [(r.item.metadata.key, r.item.metadata.content_type) for r in results]


def records(*items: StorageResult[Any]) -> list[tuple[str, bytes]]:
    """The (key, record) candidates of these results' items, as a provider holds them."""
    found = []
    for one in items:
        provider = MemoryStorageProvider()
        asyncio.run(provider.restore_many([one.item]))
        found += list(provider.engine._records.items())
    return found


def picked(query: StorageQuery, candidates: list[tuple[str, bytes]], after: Any = None) -> list[tuple[str, str]]:
    compiled = dataclasses.replace(ordering.page_request(query, 10, None).compiled, after=after)
    return keys(
        ordering.pick(
            dataclasses.replace(compiled, spec=dataclasses.replace(compiled.spec, limit=query.limit)), candidates
        )
    )


def test_sort_keys_tie_break_by_key_then_content_type() -> None:
    found = records(result("b", created=1), result("a", "y", created=1), result("a", "x", created=1), result("c"))
    assert picked(StorageQuery(order_by="created_at"), found) == [("c", "t"), ("a", "x"), ("a", "y"), ("b", "t")]
    assert picked(StorageQuery(order_by="-created_at"), found) == [("b", "t"), ("a", "y"), ("a", "x"), ("c", "t")]
    assert picked(StorageQuery(order_by="-created_at", limit=2), found) == [("b", "t"), ("a", "y")]
    # Keys compare as UTF-8 bytes: 'é' (0xC3...) after 'z'; the sort key of an item is its record's.
    assert picked(StorageQuery(order_by="key"), records(result("é"), result("z"), result("a"))) == [
        ("a", "t"),
        ("z", "t"),
        ("é", "t"),
    ]
    item = result("k", "t", created=5, updated=9).item
    [(_, record)] = records(StorageResult(item))
    for field in ("key", "created_at", "updated_at"):
        order = Order(field, False)
        assert ordering.record_position(order)(record) == ordering.sort_key(order)(item)
    unlimited = ordering.every_match(ordering.page_request(StorageQuery(order_by="key"), 10, None).compiled)
    assert unlimited.spec.limit is None and unlimited.spec.order is None


def test_a_position_is_left_behind() -> None:
    position = ordering.result_key(Order("key", True))(result("m"))
    found = records(*(result(k) for k in "azmkb"))
    assert picked(StorageQuery(order_by="-key", limit=3), found) == [("z", "t"), ("m", "t"), ("k", "t")]
    assert picked(StorageQuery(order_by="-key", limit=3), found, position) == [("k", "t"), ("b", "t"), ("a", "t")]


def test_a_record_that_does_not_decode_gives_its_place_to_the_next() -> None:
    found = records(*(result(k) for k in "abcd"))
    damaged = [(key, record[:-1] + b"\xc1" if key == "b" else record) for key, record in found]  # a bad payload
    assert picked(StorageQuery(order_by="key", limit=2), damaged) == [("a", "t"), ("c", "t")]
    assert picked(StorageQuery(order_by="key"), damaged) == [("a", "t"), ("c", "t"), ("d", "t")]


def test_unordered_keeps_a_plain_query_as_it_is() -> None:
    compiled = ordering.unordered(StorageQuery(limit=3))
    assert ordering.unordered(compiled) is compiled
    assert ordering.unordered(StorageQuery(order_by="key", limit=3)).spec.order is None


def test_merge_holds_one_head_per_stream() -> None:
    async def stream(*names: str) -> AsyncIterator[StorageResult[Any]]:
        for name in names:
            yield result(name)

    async def merged(order: Order, limit: int | None, *streams: tuple[str, ...]) -> list[str]:
        found = ordering.merge([stream(*names) for names in streams], order, limit)
        return [r.item.metadata.key async for r in found]

    up, down = Order("key", False), Order("key", True)
    assert asyncio.run(merged(up, None, ("a", "d"), (), ("b", "c", "e"))) == ["a", "b", "c", "d", "e"]
    assert asyncio.run(merged(down, 3, ("d", "a"), ("e", "c", "b"))) == ["e", "d", "c"]
    assert asyncio.run(merged(up, 0, ("a",))) == []
    assert asyncio.run(merged(up, None)) == []


@pytest.mark.parametrize("size", [0, -1, MAX_LIMIT, 1.5, True, "2", None])
def test_a_bad_size_is_refused(size: object) -> None:
    with pytest.raises(ValidationError, match="size must be an int"):
        ordering.page_request(StorageQuery(), size, None)


def _cursor_of(query: StorageQuery, body: list[Any]) -> str:
    """A cursor with a valid checksum around ``body`` (what a forger could make)."""
    packed = msgpack.packb(body, use_bin_type=True)
    raw = packed + ordering._checksum(packed)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _fingerprint(query: StorageQuery) -> bytes:
    request = ordering.page_request(query, 1, None)
    return request.fingerprint


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (lambda f: [2, f, 0, [b"k", b"t"]], "not a cursor of this version"),
        (lambda f: [1, b"other---", 0, [b"k", b"t"]], "made for another query"),
        (lambda f: [1, f, -1, [b"k", b"t"]], "does not parse"),
        (lambda f: [1, f, 2**64 - 1, [b"k", b"t"]], "does not parse"),
        (lambda f: [1, f, 0, [b"k"]], "does not parse"),
        (lambda f: [1, f, 0, [5, b"k", b"t"]], "does not parse"),
        (lambda f: [1, f, 0, ["k", b"t"]], "does not parse"),
        (lambda f: [1, f, 0, {"k": 1}], "does not parse"),
        (lambda f: [1, f, True, [b"k", b"t"]], "does not parse"),
        (lambda f: [1, f], "not a cursor of this version"),
        (lambda f: "not a list", "not a cursor of this version"),
    ],
)
def test_a_forged_cursor_is_refused(body: Any, message: str) -> None:
    query = StorageQuery(order_by="key")
    cursor = _cursor_of(query, body(_fingerprint(query)))
    with pytest.raises(ValidationError, match=message):
        ordering.page_request(query, 1, cursor)


def test_a_time_position_needs_a_time_in_range() -> None:
    query = StorageQuery(order_by="-updated_at")
    fingerprint = _fingerprint(query)
    good = _cursor_of(query, [1, fingerprint, 3, [5, b"k", b"t"]])
    request = ordering.page_request(query, 2, good)
    assert (request.compiled.after, request.served) == ((5, b"k", b"t"), 3)
    for moment in (2**62, "5", None):
        forged = _cursor_of(query, [1, fingerprint, 3, [moment, b"k", b"t"]])
        with pytest.raises(ValidationError, match="does not parse"):
            ordering.page_request(query, 2, forged)
    # A body that is no msgpack at all, under a valid checksum.
    raw = b"\xc1" + ordering._checksum(b"\xc1")
    with pytest.raises(ValidationError, match="not a cursor of this version"):
        ordering.page_request(query, 2, base64.urlsafe_b64encode(raw).decode())


@given(st.text(max_size=60))
def test_any_text_is_refused_or_a_cursor(text: str) -> None:
    with pytest.raises(ValidationError):
        ordering.page_request(StorageQuery(), 1, text)


def test_a_limit_bounds_the_walk() -> None:
    query = StorageQuery(order_by="key", limit=5)
    fingerprint = _fingerprint(query)
    request = ordering.page_request(query, 3, _cursor_of(query, [1, fingerprint, 3, [b"c", b"t"]]))
    assert request.compiled.spec.limit == 2  # what the limit leaves
    page = ordering.finish_page(request, [result("d"), result("e")])
    assert (keys(page.results), page.next) == ([("d", "t"), ("e", "t")], None)
    spent = ordering.page_request(query, 3, _cursor_of(query, [1, fingerprint, 7, [b"c", b"t"]]))
    assert spent.compiled.spec.limit == 0
