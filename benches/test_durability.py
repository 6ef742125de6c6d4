"""save latency under each durability mode ("sync", "async", "none"), for docs/operations.md.

One LMDB store per mode on the same disk; each round saves 64 items of the ~200-byte
record, one after another (each save waits for its own commit) or all at once (group
commit: the writer thread commits whatever has queued in one transaction). Every
save's own latency is kept too, for its p50 and p99 (``extra_info``).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unistore.providers import LmdbStorageProvider

SAVES = 64
ROUNDS = 30  # one fsync takes 0.2 to 2 ms on a shared machine: enough rounds for a stable minimum
MODES = ["sync", "async", "none"]
_numbers = itertools.count()


@pytest.fixture(scope="module", params=MODES)
def provider(request: pytest.FixtureRequest, workdir: Path) -> Iterator[LmdbStorageProvider]:
    provider = LmdbStorageProvider(workdir / f"durability-{request.param}", durability=request.param)
    yield provider
    provider.engine.close()


def _percentiles(benchmark: Any, samples: list[float]) -> None:
    benchmark.extra_info["batch"] = SAVES
    benchmark.extra_info["save_p50_us"] = round(statistics.median(samples) * 1e6, 1)
    benchmark.extra_info["save_p99_us"] = round(statistics.quantiles(samples, n=100)[98] * 1e6, 1)


@pytest.mark.benchmark(group="durability-sequential")
def test_durability_sequential(
    benchmark: Any, provider: LmdbStorageProvider, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    samples: list[float] = []

    async def saves() -> None:
        for _ in range(SAVES):
            started = time.perf_counter()
            await provider.save(f"seq{next(_numbers)}", record, "user", tags={"role": "admin"})
            samples.append(time.perf_counter() - started)

    benchmark.pedantic(lambda: loop.run_until_complete(saves()), rounds=ROUNDS, iterations=1)
    _percentiles(benchmark, samples)


@pytest.mark.benchmark(group="durability-concurrent-64")
def test_durability_concurrent(
    benchmark: Any, provider: LmdbStorageProvider, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    samples: list[float] = []

    async def one(key: str) -> None:
        started = time.perf_counter()
        await provider.save(key, record, "user", tags={"role": "admin"})
        samples.append(time.perf_counter() - started)

    async def saves() -> None:
        await asyncio.gather(*(one(f"con{next(_numbers)}") for _ in range(SAVES)))

    benchmark.pedantic(lambda: loop.run_until_complete(saves()), rounds=ROUNDS, iterations=1)
    _percentiles(benchmark, samples)
