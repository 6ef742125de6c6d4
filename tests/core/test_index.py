"""The index layer on its own: index terms, the cost-based planner (with made-up
sizes) and the one search loop (with made-up chunks)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pytest

from helpers import UTC
from unistore import StorageQuery, index
from unistore.codec import prepare_save
from unistore.core import RecordFields

COSTS = index.Costs(scan=0.46, fetch=1.36, posting=0.01, time_entry=0.3)


class Sizes:
    """Made-up sizes; remembers how far each range was counted."""

    def __init__(self, everything: int, postings: dict[bytes, int], keys: int = 0, times: int = 0) -> None:
        self.everything = everything
        self.postings = postings
        self.key_count = keys
        self.time_count = times
        self.asked: list[tuple[str, int | None]] = []

    def posting(self, kind: int, term: bytes) -> int:
        return self.postings.get(term, 0)

    def keys(self, literal: bytes, most: int | None) -> int:
        if not literal:
            return self.everything
        self.asked.append(("keys", most))
        return self.key_count if most is None else min(self.key_count, most)

    def times(self, kind: int, low: int | None, high: int | None, most: int) -> int:
        self.asked.append(("times", most))
        return min(self.time_count, most)


def tag(key: str, value: str) -> bytes:
    return index.tag_term(key.encode(), value.encode())


def plan(sizes: Sizes, **criteria: Any) -> index.Plan:
    return index.plan(index.compile_query(StorageQuery(**criteria)).spec, sizes, COSTS)


def test_a_half_of_the_items_tag_with_a_pattern_is_scanned_a_hundredth_is_walked() -> None:
    sizes = Sizes(100_000, {tag("half", "yes"): 50_000, tag("one", "yes"): 1000})
    assert plan(sizes, pattern="*99?", tags={"half": "yes"}).path == index.KEYS
    walked = plan(sizes, tags={"one": "yes"})
    assert (walked.path, walked.terms, walked.candidates) == (index.POSTINGS, ((index.TAG, tag("one", "yes")),), 1000)
    assert plan(sizes, tags={"one": "yes", "half": "yes"}).terms[0] == (index.TAG, tag("one", "yes"))


def test_another_list_is_anded_only_when_it_saves_more_than_it_costs() -> None:
    sizes = Sizes(100_000, {tag("a", "1"): 1000, tag("b", "1"): 2000, tag("all", "1"): 100_000})
    both = plan(sizes, tags={"a": "1", "b": "1"})
    assert both.terms == ((index.TAG, tag("a", "1")), (index.TAG, tag("b", "1")))  # 2% of 1000 kept: worth it
    assert both.candidates == pytest.approx(20)
    alone = plan(sizes, tags={"a": "1", "all": "1"})  # a list of every item narrows nothing
    assert alone.terms == ((index.TAG, tag("a", "1")),)
    typed = plan(Sizes(100_000, {b"t": 10}), content_type="t")
    assert typed.terms == ((index.CONTENT_TYPE, b"t"),) and typed.cost == pytest.approx(10 * 0.01 + 10 * 1.36)


def test_an_empty_posting_list_is_the_whole_plan_and_nothing_else_is_counted() -> None:
    sizes = Sizes(100_000, {}, keys=10, times=10)
    empty = plan(sizes, tags={"none": "x"}, pattern="user:*", created_after=datetime(2020, 1, 1, tzinfo=UTC))
    assert (empty.path, empty.cost) == (index.POSTINGS, 0)
    assert sizes.asked == [("keys", 1), ("times", 1)]  # counting stops at once: nothing can beat 0


def test_a_key_range_is_counted_up_to_what_the_best_plan_costs() -> None:
    sizes = Sizes(100_000, {tag("one", "yes"): 1000}, keys=50)
    narrow = plan(sizes, pattern="user:00*", tags={"one": "yes"})
    assert (narrow.path, narrow.literal, narrow.candidates) == (index.KEYS, b"user:00", 50)
    budget = 1000 * 0.01 + 1000 * 1.36
    assert sizes.asked == [("keys", int(budget // 0.46) + 1)]
    wide = Sizes(100_000, {tag("one", "yes"): 1000}, keys=90_000)
    assert plan(wide, pattern="user:*", tags={"one": "yes"}).path == index.POSTINGS
    # A prefix as costly as the whole keyspace still wins: it can only be narrower.
    assert plan(Sizes(10, {}, keys=10), pattern="u*").literal == b"u"


def test_a_time_range_is_read_when_it_is_narrow() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    narrow = plan(Sizes(100_000, {}, times=100), created_after=now)
    assert (narrow.path, narrow.low, narrow.high, narrow.repeats) == (
        index.CREATED_RANGE,
        1767225600000000,
        None,
        False,
    )
    expiring = plan(Sizes(100_000, {}, times=100), expires_before=now)
    assert (expiring.path, expiring.repeats) == (index.EXPIRES_RANGE, True)
    assert plan(Sizes(100_000, {}, times=60_000), created_after=now).path == index.KEYS


def test_a_record_is_indexed_under_its_tags_type_and_times() -> None:
    fields = RecordFields(7, bytes(16), 10, 20, 30, b"k", b"doc", [(b"a", b"1"), (b"b", b"")], b"\xc0")
    assert index.postings(fields) == [
        (index.TAG, b"\0\0\0\x01a1"),
        (index.TAG, b"\0\0\0\x01b"),
        (index.CONTENT_TYPE, b"doc"),
    ]
    assert index.times(fields) == [(index.CREATED, 10), (index.UPDATED, 20), (index.EXPIRES, 30)]
    assert index.times(fields._replace(expires=None)) == [(index.CREATED, 10), (index.UPDATED, 20)]
    assert index.tag_term(b"ab", b"c") != index.tag_term(b"a", b"bc")  # no two tags share a term


def records(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    made = []
    for n in range(start, start + count):
        _, record, _ = prepare_save(f"k{n}", n, "t").build(None, 1, lambda n=n: n + 1)
        made.append((f"k{n}", record))
    return made


def reader(chunks: list[list[tuple[str, bytes]]]) -> Any:
    def read(position: int | None) -> index.Chunk:
        at = position or 0
        return chunks[at], at + 1 if at + 1 < len(chunks) else None

    return read


def test_the_loop_drops_repeats_before_it_applies_the_limit() -> None:
    first, second = records(3), records(3, start=3)
    chunks = [first, first[:2] + second[:1], second[1:]]  # two repeats come back in the second chunk
    found = [
        r.item.metadata.key
        for chunk in index.search_chunks(index.compile_query(StorageQuery(limit=5)), reader(chunks), repeats=True)
        for r in chunk
    ]
    assert found == ["k0", "k1", "k2", "k3", "k4"]
    without = index.search_chunks(index.compile_query(StorageQuery()), reader(chunks))
    assert sum(len(chunk) for chunk in without) == 8  # where the path has no repeats, none are looked for


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ERRORs logged on ``unistore.index``, one message each."""
    return [r.getMessage() for r in caplog.records if r.name == "unistore.index" and r.levelno == logging.ERROR]


def test_the_loop_skips_and_names_a_damaged_candidate(caplog: pytest.LogCaptureFixture) -> None:
    good = records(3)
    query = index.compile_query(StorageQuery(limit=2))
    for damaged in (b"\x01short", good[0][1][:-1] + b"\xc1"):  # a bad header; a bad payload
        chunks = [[good[0], ("stored-form", damaged), *good[1:]]]
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="unistore.index"):
            found = [
                r.item.metadata.key
                for chunk in index.search_chunks(query, reader(chunks), name=str.upper)
                for r in chunk
            ]
            assert found == ["k0", "k1"]  # the damaged one never counts against the limit
            [logged] = errors_logged(caplog)
            assert "'STORED-FORM'" in logged
            caplog.clear()
            raw = [r.item.metadata.key for r in index.select(index.compile_query(StorageQuery()), chunks[0], 0, None)]
            assert raw == ["k0", "k1", "k2"]
            [logged] = errors_logged(caplog)
            assert "'stored-form'" in logged


def test_matching_chunks_are_the_undecoded_hits_up_to_the_limit() -> None:
    chunks = [records(3), records(3, start=3)]
    query = index.compile_query(StorageQuery(pattern="k[1-4]", limit=3))
    assert [key for chunk in index.matching_chunks(query, reader(chunks)) for key, _ in chunk] == ["k1", "k2", "k3"]
    assert list(index.matching_chunks(index.compile_query(StorageQuery(limit=0)), reader(chunks))) == []
    assert index.compile_query(query) is query  # compiled once: a compiled query passes through


def test_matching_chunks_skip_and_name_a_record_whose_header_does_not_parse(caplog: pytest.LogCaptureFixture) -> None:
    chunks = [[*records(2), ("stored-form", b"\x01short"), *records(1, start=2)]]
    query = index.compile_query(StorageQuery())
    with caplog.at_level(logging.ERROR, logger="unistore.index"):
        found = [key for chunk in index.matching_chunks(query, reader(chunks), name=str.upper) for key, _ in chunk]
    assert found == ["k0", "k1", "k2"]
    [logged] = errors_logged(caplog)
    assert "'STORED-FORM'" in logged and "68-byte header" in logged
