"""The native core against its pure twin, same inputs, same run."""

from __future__ import annotations

import importlib
import os
import struct
from types import ModuleType
from typing import Any

import pytest

from unistore import _purecore
from unistore.codec import prepare_save

native = importlib.import_module("unistore._core")  # these benchmarks exist to measure it
TWINS = {"pure": _purecore, "native": native}


def headers(count: int) -> list[bytes]:
    records = []
    for n in range(count):
        prepared = prepare_save(f"user:{n:07d}", None, "user", None, {"group": str(n % 100), "role": "dev"})
        records.append(
            _purecore.pack_record(n, bytes(16), n, n, None, prepared.key_bytes, b"user", prepared.tag_pairs, b"\xc0")
        )
    return records


RECORDS = headers(int(os.environ.get("UNISTORE_BENCH_RECORDS", "1000000")))
# Keys shaped like a multi-tenant application's, and a pattern with several stars and a class.
KEYED = [
    _purecore.pack_record(n, bytes(16), n, n, None, f"tenant:{n % 97}:user:{n:07d}:profile".encode(), b"u", [], b"")
    for n in range(100_000)
]


@pytest.mark.parametrize("twin", ["pure", "native"])
@pytest.mark.benchmark(group="core-glob-100k-keys")
def test_core_glob(benchmark: Any, twin: str) -> None:
    """The glob as a search runs it: the pattern of a query, over the keys of a batch of records."""
    matcher = TWINS[twin].QueryMatcher(b"tenant:*:user:*[13579]:prof*", None, [], None, None, None, None)
    assert benchmark(matcher.matching, KEYED, 0) == list(range(1, 100_000, 2))


@pytest.mark.parametrize("twin", ["pure", "native"])
@pytest.mark.benchmark(group="core-glob-call-100k-keys")
def test_core_glob_per_call(benchmark: Any, twin: str) -> None:
    """One Python call per key: the call itself is most of what native costs here."""
    glob = TWINS[twin].Glob(b"tenant:*:user:*[13579]:prof*")
    keys = [record[68:-1] for record in KEYED]
    assert benchmark(lambda: sum(1 for key in keys if glob.match(key))) == 50_000


@pytest.mark.parametrize("twin", ["pure", "native"])
@pytest.mark.benchmark(group="core-query-1m-headers")
def test_core_query_matching(benchmark: Any, twin: str) -> None:
    module: ModuleType = TWINS[twin]
    matcher = module.QueryMatcher(b"user:*2", b"user", [(b"group", b"42")], None, None, None, None)

    def scan() -> int:
        return len(matcher.matching(RECORDS, 0))  # the batch call the engine's search makes

    assert benchmark.pedantic(scan, rounds=3, iterations=1) == len(RECORDS) // 100


BIG = b"".join(struct.pack(">Q", n) for n in range(0, 3_000_000, 3))  # 1M ids
SMALL = b"".join(struct.pack(">Q", n) for n in range(0, 3_000_000, 300))  # 10k ids


@pytest.mark.parametrize("twin", ["pure", "native"])
@pytest.mark.benchmark(group="core-intersect-1m-10k")
def test_core_intersection(benchmark: Any, twin: str) -> None:
    intersect = TWINS[twin].intersect_ids
    assert len(benchmark.pedantic(intersect, (BIG, SMALL), rounds=5, iterations=1)) == 8 * 10_000
