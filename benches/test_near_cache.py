"""The near cache: a hot ``manager.load`` through a Redis provider with a near cache against
the same load from the LMDB provider, and a cold one (a miss) against a load without the
near cache, side by side in one run (BATCH sequential awaits a round)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from unistore import MetricsManager, UnifiedStorageManager
from unistore.providers import RedisStorageProvider

#: Keys the cold benchmarks load, each once: more than their rounds ever reach (half each).
COLD_KEYS = 60_000
#: Loads a round of the cold benchmarks, and their rounds: 10,000 keys each.
COLD_BATCH, COLD_ROUNDS = 200, 50


def redis_manager(port: int, namespace: str, **settings: Any) -> tuple[UnifiedStorageManager, RedisStorageProvider]:
    provider = RedisStorageProvider(port=port, namespace=namespace, **settings)
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("user", provider)
    return manager, provider


@pytest.fixture(scope="module")
def near(
    redis_port: int, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> Iterator[tuple[UnifiedStorageManager, UnifiedStorageManager]]:
    """Two managers on one namespace holding ``user:1`` and COLD_KEYS more: one through a
    provider with a near cache, one through a provider without."""
    namespace = uuid.uuid4().hex
    cached, with_cache = redis_manager(redis_port, namespace, near_cache=COLD_KEYS + 10)
    plain, without = redis_manager(redis_port, namespace)
    loop.run_until_complete(plain.save("user:1", record, "user", tags={"role": "admin"}))
    for start in range(0, COLD_KEYS, 5000):
        items = {f"cold:{n}": record for n in range(start, start + 5000)}
        loop.run_until_complete(without.save_many(items, "user"))
    yield cached, plain
    loop.run_until_complete(without.drop_namespace())
    loop.run_until_complete(with_cache.cleanup())
    loop.run_until_complete(without.cleanup())


def loads(manager: UnifiedStorageManager, keys: Iterator[str], batch: int) -> Any:
    async def run() -> Any:
        for _ in range(batch):
            item = await manager.load(next(keys), "user")
        return item.data

    return run


@pytest.mark.benchmark(group="near-cache-hot-load")
def test_near_cache_hot_load(
    benchmark: Any, near: Any, batch: int, record: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> None:
    cached, _ = near
    reads = loads(cached, itertools.repeat("user:1"), batch)
    assert loop.run_until_complete(reads()) == record  # (the first: a miss, kept)
    benchmark.extra_info["batch"] = batch
    assert benchmark(lambda: loop.run_until_complete(reads())) == record


@pytest.mark.benchmark(group="near-cache-hot-load")
def test_near_cache_hot_load_lmdb_manager(
    benchmark: Any, manager: UnifiedStorageManager, batch: int, record: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> None:
    reads = loads(manager, itertools.repeat("user:1"), batch)
    benchmark.extra_info["batch"] = batch
    assert benchmark(lambda: loop.run_until_complete(reads())) == record


@pytest.mark.benchmark(group="near-cache-cold-load")
def test_near_cache_cold_load(
    benchmark: Any, near: Any, record: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> None:
    cached, _ = near
    keys = (f"cold:{n}" for n in range(0, COLD_KEYS, 2))  # each loaded once: every load a miss
    benchmark.extra_info["batch"] = COLD_BATCH
    reads = loads(cached, keys, COLD_BATCH)
    result = benchmark.pedantic(lambda: loop.run_until_complete(reads()), rounds=COLD_ROUNDS)
    assert result == record


@pytest.mark.benchmark(group="near-cache-cold-load")
def test_near_cache_cold_load_without_it(
    benchmark: Any, near: Any, record: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> None:
    _, plain = near
    keys = (f"cold:{n}" for n in range(1, COLD_KEYS, 2))
    benchmark.extra_info["batch"] = COLD_BATCH
    reads = loads(plain, keys, COLD_BATCH)
    result = benchmark.pedantic(lambda: loop.run_until_complete(reads()), rounds=COLD_ROUNDS)
    assert result == record


@pytest.mark.benchmark(group="near-cache-interleaved")
def test_near_cache_interleaved_ratios(
    benchmark: Any, near: Any, batch: int, manager: UnifiedStorageManager, loop: asyncio.AbstractEventLoop
) -> None:
    """The two ratios above, measured so that machine noise falls on both sides alike:
    PAIRS pairs of rounds, each of the near cache's loads right after one of its anchor's
    (hot: BATCH loads of one item, against the LMDB manager's; cold: COLD_BATCH misses,
    against as many loads without the near cache); ``extra_info`` holds each median ratio
    and its 10th and 90th percentiles."""
    pairs = int(os.environ.get("UNISTORE_BENCH_PAIRS", "40"))
    cached, plain = near
    cold = itertools.count(COLD_KEYS // 2)  # (past the 2 x 10,000 keys the cold benchmarks above load)

    async def timed(manager_: UnifiedStorageManager, keys: Iterator[str], count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            await manager_.load(next(keys), "user")
        return time.perf_counter() - started

    async def measure() -> dict[str, list[float]]:
        hot = itertools.repeat("user:1")
        await timed(cached, hot, 10)
        misses = (f"cold:{next(cold)}" for _ in itertools.count())
        return {
            "hot_vs_lmdb_manager": sorted(
                [await timed(cached, hot, batch) / await timed(manager, hot, batch) for _ in range(pairs)]
            ),
            "cold_vs_without": sorted(
                [await timed(cached, misses, COLD_BATCH) / await timed(plain, misses, COLD_BATCH) for _ in range(pairs)]
            ),
        }

    ratios = benchmark.pedantic(lambda: loop.run_until_complete(measure()), rounds=1, iterations=1)
    for name, found in ratios.items():
        tenth, ninetieth = found[int(0.1 * len(found))], found[min(int(0.9 * len(found)), len(found) - 1)]
        benchmark.extra_info[name] = [round(statistics.median(found), 3), round(tenth, 3), round(ninetieth, 3)]


#: The Zipf workload: keys, exponent, loads a round (a write told after every ninth), rounds.
ZIPF_KEYS, ZIPF_S, ZIPF_LOADS, ZIPF_ROUNDS = 100_000, 1.1, 20_000, 3


def zipf_keys(count: int, seed: int) -> list[str]:
    """``count`` keys drawn by a Zipf law of exponent ZIPF_S over ZIPF_KEYS keys (rank 1 the most drawn)."""
    weights = [1 / rank**ZIPF_S for rank in range(1, ZIPF_KEYS + 1)]
    return [f"z:{n}" for n in random.Random(seed).choices(range(ZIPF_KEYS), weights, k=count)]


@pytest.fixture(scope="module")
def zipf_namespace(redis_port: int, loop: asyncio.AbstractEventLoop, record: dict[str, Any]) -> Iterator[str]:
    namespace = uuid.uuid4().hex
    provider = RedisStorageProvider(port=redis_port, namespace=namespace)
    for start in range(0, ZIPF_KEYS, 10_000):
        items = {f"z:{n}": record for n in range(start, start + 10_000)}
        loop.run_until_complete(provider.save_many(items, "user"))
    yield namespace
    loop.run_until_complete(provider.drop_namespace())
    loop.run_until_complete(provider.cleanup())


def writer(port: int, namespace: str, record: dict[str, Any]) -> tuple[int, int]:
    """Fork a process that saves one Zipf-drawn key for every byte it reads from a pipe
    (eight saves in flight at most), until the pipe closes; its pid and the pipe's write end."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read_end)
        return pid, write_end
    os.close(write_end)
    code = 1
    try:

        async def write() -> None:
            provider = RedisStorageProvider(port=port, namespace=namespace)
            keys = itertools.cycle(zipf_keys(10_000, seed=2))
            room = asyncio.Semaphore(8)
            running: set[asyncio.Future[None]] = set()
            signals = asyncio.StreamReader()
            await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(signals), os.fdopen(read_end, "rb")
            )

            async def save(key: str) -> None:
                try:
                    await provider.save(key, record, "user")
                finally:
                    room.release()

            while told := await signals.read(4096):
                for _ in told:
                    await room.acquire()
                    saving = asyncio.ensure_future(save(next(keys)))
                    running.add(saving)
                    saving.add_done_callback(running.discard)
            for _ in range(8):
                await room.acquire()

        asyncio.run(write())
        code = 0
    finally:
        os._exit(code)


@pytest.mark.parametrize("near_cache", [0, 10_000], ids=["without", "with-near-cache"])
@pytest.mark.benchmark(group="near-cache-zipf")
def test_near_cache_zipf_reads_with_writes_from_another_process(
    benchmark: Any,
    redis_port: int,
    zipf_namespace: str,
    record: dict[str, Any],
    loop: asyncio.AbstractEventLoop,
    near_cache: int,
) -> None:
    """Loads of Zipf-drawn keys; after every ninth, another process is told to save one (so
    writes are a tenth of the operations, however fast the loads go)."""
    manager, provider = redis_manager(redis_port, zipf_namespace, near_cache=near_cache)
    keys = zipf_keys(ZIPF_LOADS, seed=1)
    pid, tell = writer(redis_port, zipf_namespace, record)
    metrics = MetricsManager.get_instance()
    counted = [0.0, 0.0]

    async def reads() -> None:
        for number, key in enumerate(keys, 1):
            await manager.load(key, "user")
            if number % 9 == 0:
                os.write(tell, b"w")

    def round_() -> None:
        before = [metrics.value(name, namespace=zipf_namespace) for name in HIT_MISS]
        loop.run_until_complete(reads())
        for position, name in enumerate(HIT_MISS):
            counted[position] += metrics.value(name, namespace=zipf_namespace) - before[position]

    try:
        loop.run_until_complete(reads())  # warm: the cache filled, tracking up
        started = time.perf_counter()
        benchmark.pedantic(round_, rounds=ZIPF_ROUNDS)
        elapsed = time.perf_counter() - started
    finally:
        os.close(tell)
        os.waitpid(pid, 0)
    hits, misses = counted
    benchmark.extra_info["batch"] = ZIPF_LOADS
    benchmark.extra_info["loads_per_second"] = round(ZIPF_ROUNDS * ZIPF_LOADS / elapsed)
    benchmark.extra_info["hit_ratio"] = round(hits / (hits + misses), 3) if near_cache else 0.0
    loop.run_until_complete(provider.cleanup())


#: The near cache's counters a Zipf round reads.
HIT_MISS = ("storage_near_cache_hits", "storage_near_cache_misses")
