"""search: the cost follows the hits, not the store size."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unistore import StorageQuery
from unistore.providers.lmdb import LmdbEngine

pytestmark = pytest.mark.benchmark(group="search-200-hits")

HITS = 200


def fill(path: Path, size: int, record: dict[str, Any]) -> LmdbEngine:
    """``size`` items; ``HITS`` of them tagged hot=yes, ``HITS`` tagged pair=yes and every
    tenth tagged tenth=yes (so hot=yes AND tenth=yes has HITS // 10 hits)."""
    engine = LmdbEngine(path, namespace="bench", durability="none")
    batch = 10_000
    for start in range(0, size, batch):

        def write(txn: Any, dbs: Any, start: int = start) -> None:
            for n in range(start, min(start + batch, size)):
                tags = {"group": str(n % 997)}
                if n % (size // HITS) == 0:
                    tags["hot"] = "yes"
                if n % 10 == 0:
                    tags["tenth"] = "yes"
                engine.writes.save(f"item:{n:07d}", record, "item", None, tags)(txn, dbs)

        engine.write(write)
    return engine


@pytest.fixture(scope="module")
def store_20k(workdir: Path, record: dict[str, Any]) -> Iterator[LmdbEngine]:
    engine = fill(workdir / "search20k", 20_000, record)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def store_200k(workdir: Path, record: dict[str, Any], large_items: int) -> Iterator[LmdbEngine]:
    engine = fill(workdir / "search200k", large_items, record)
    yield engine
    engine.close()


def run(engine: LmdbEngine, query: StorageQuery) -> int:
    return sum(1 for _ in engine.search(query))


def test_search_tag_200_hits_in_20k(benchmark: Any, store_20k: LmdbEngine) -> None:
    assert benchmark(run, store_20k, StorageQuery(tags={"hot": "yes"})) == HITS


def test_search_tag_200_hits_in_200k(benchmark: Any, store_200k: LmdbEngine) -> None:
    assert benchmark(run, store_200k, StorageQuery(tags={"hot": "yes"})) == HITS


@pytest.mark.benchmark(group="search-two-tags")
def test_search_two_tags_in_200k(benchmark: Any, store_200k: LmdbEngine) -> None:
    query = StorageQuery(tags={"tenth": "yes", "hot": "yes"})
    before = store_200k.candidates_examined
    assert run(store_200k, query) == HITS  # every hot item is also a tenth item
    examined = store_200k.candidates_examined - before
    benchmark.extra_info["candidates"] = examined
    benchmark.extra_info["smaller_posting_list"] = HITS
    assert examined <= HITS  # no more candidates than the smaller posting list (20,000 tenths)
    assert benchmark(run, store_200k, query) == HITS


SCAN_ITEMS = int(os.environ.get("UNISTORE_BENCH_SCAN_ITEMS", "1000000"))


@pytest.fixture(scope="module")
def store_scan(workdir: Path, record: dict[str, Any]) -> Iterator[LmdbEngine]:
    engine = fill(workdir / "scan", SCAN_ITEMS, record)
    yield engine
    engine.close()


@pytest.mark.benchmark(group="search-scan-1m")
def test_search_scan_pattern_without_prefix(benchmark: Any, store_scan: LmdbEngine) -> None:
    """A pattern with no literal prefix checks every record's header: candidates per second."""
    query = StorageQuery(pattern="*99999?")
    before = store_scan.candidates_examined
    rounds = 0

    def counted() -> int:
        nonlocal rounds
        rounds += 1
        return run(store_scan, query)

    found = benchmark.pedantic(counted, rounds=3, iterations=1)
    assert found == SCAN_ITEMS // 1_000_000 * 10
    per_round = (store_scan.candidates_examined - before) // rounds  # one round only with --benchmark-disable
    assert per_round == SCAN_ITEMS
    benchmark.extra_info["candidates"] = per_round
    if benchmark.stats is not None:
        benchmark.extra_info["candidates_per_second"] = round(per_round / benchmark.stats.stats.median)
