"""The Redis provider against raw ``redis.asyncio`` on the same private server.

Both sides use one event loop, RESP3 (the provider pins ``protocol=3``) and hiredis
(the test extra installs it, as the redis extra does), and pay for msgpack: the
anchors store ``msgpack.packb(RECORD)`` and decode with ``msgpack.unpackb``. The raw
client is redis-py's as a user makes it (its default ``socket_timeout``); the
provider talks to redis-py's connections directly (its module ``connection`` says why).
Loads and saves run BATCH sequential awaits per round, ``load_many`` MANY_BATCH
(per operation: round / batch), for a fixed number of rounds. Searches run one
per round; before they are timed, one search is counted on the server
(``INFO commandstats``, calls by command) and on the client (sends: a pipeline
is one round trip). The 200-hit search asserts that ten times the items cost
the same commands and round trips.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from unistore import MetricsManager, StorageQuery, UnifiedStorageManager, index
from unistore.codec import prepare_save
from unistore.core import pack_record
from unistore.model import now_micros
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout, scripts

#: Sequential awaits per round for single loads and saves.
BATCH = 200
#: ``load_many`` calls per round, and the keys each one reads.
MANY_BATCH = 50
MANY_KEYS = 100
#: Rounds of the loads, saves and load_many: fixed, so both sides of a save write the
#: same fresh keys, and many, so that each benchmark spans seconds: a busy phase of
#: this shared machine then rarely covers all of one side's rounds.
ROUNDS = 60
#: Rounds of the searches (one search each): about two seconds a benchmark.
SEARCH_ROUNDS = {1000: 150, 200: 600}
#: Items per ``save_many`` while filling the search namespaces.
FILL_CHUNK = 5000
TAGS = {"role": "admin"}
_numbers = itertools.count()


def run(loop: asyncio.AbstractEventLoop, make: Any) -> Any:
    """A benchmark's round: ``make()``'s coroutine run to the end on the session's loop."""
    return loop.run_until_complete(make())


# -- the two sides ---------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_redis(redis_port: int, loop: asyncio.AbstractEventLoop, record: dict[str, Any]) -> Iterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_port, protocol=3)
    run(loop, lambda: client.set(b"raw:user:1", msgpack.packb(record)))
    yield client
    run(loop, client.aclose)


def redis_manager(port: int, namespace: str, content_type: str) -> tuple[UnifiedStorageManager, RedisStorageProvider]:
    provider = RedisStorageProvider({"host": "127.0.0.1", "port": port, "namespace": namespace})
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider(content_type, provider)
    return manager, provider


@pytest.fixture(scope="module")
def rmanager(
    redis_port: int, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> Iterator[UnifiedStorageManager]:
    """A manager over the Redis provider (namespace ``bench``), holding ``user:1``."""
    manager, _ = redis_manager(redis_port, "bench", "user")
    run(loop, lambda: manager.save("user:1", record, "user", tags=TAGS))  # also connects and checks the shards
    yield manager
    run(loop, manager.cleanup)


# -- load ------------------------------------------------------------------------


@pytest.mark.benchmark(group="redis-load")
def test_redis_load_raw_get_unpackb(
    benchmark: Any, raw_redis: aioredis.Redis, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    async def loads() -> Any:
        for _ in range(BATCH):
            value = msgpack.unpackb(await raw_redis.get(b"raw:user:1"))
        return value

    benchmark.extra_info["batch"] = BATCH
    assert benchmark.pedantic(run, (loop, loads), rounds=ROUNDS, iterations=1, warmup_rounds=1) == record


@pytest.mark.benchmark(group="redis-load")
def test_redis_load_manager(
    benchmark: Any, rmanager: UnifiedStorageManager, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    async def loads() -> Any:
        for _ in range(BATCH):
            item = await rmanager.load("user:1", "user")
        return item.data

    benchmark.extra_info["batch"] = BATCH
    assert benchmark.pedantic(run, (loop, loads), rounds=ROUNDS, iterations=1, warmup_rounds=1) == record


# -- save ------------------------------------------------------------------------


@pytest.mark.benchmark(group="redis-save")
def test_redis_save_raw_set_packb(
    benchmark: Any, raw_redis: aioredis.Redis, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    """Fresh keys, as the manager's saves below."""

    async def saves() -> None:
        for _ in range(BATCH):
            await raw_redis.set(b"raw:save:%d" % next(_numbers), msgpack.packb(record))

    benchmark.extra_info["batch"] = BATCH
    benchmark.pedantic(run, (loop, saves), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="redis-save")
def test_redis_save_manager_tagged(
    benchmark: Any, rmanager: UnifiedStorageManager, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    async def saves() -> None:
        for _ in range(BATCH):
            await rmanager.save(f"save:{next(_numbers)}", record, "user", tags=TAGS)

    benchmark.extra_info["batch"] = BATCH
    benchmark.pedantic(run, (loop, saves), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="redis-save")
def test_redis_save_manager_upsert_unchanged_tags(
    benchmark: Any, rmanager: UnifiedStorageManager, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    """An upsert whose tags stay: the keys the script needs are the ones declared, one round trip."""
    run(loop, lambda: rmanager.save("upsert:1", record, "user", tags=TAGS))

    async def saves() -> None:
        for _ in range(BATCH):
            await rmanager.save("upsert:1", record, "user", tags=TAGS)

    benchmark.extra_info["batch"] = BATCH
    benchmark.pedantic(run, (loop, saves), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="redis-save")
def test_redis_save_script_alone(
    benchmark: Any, raw_redis: aioredis.Redis, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    """A piece of the manager's save: only the EVALSHA of the provider's save script, sent
    by redis-py with the keys and arguments the provider sends (records packed beforehand,
    in the round's setup), on the namespace ``bench-script``: what the script and its round
    trip cost without the provider's Python."""
    prefix = layout.shard_prefix(b"bench-script", 0, 1)
    run(loop, lambda: raw_redis.script_load(scripts.SAVE.source))

    def arguments() -> tuple[tuple[Any, ...], dict[str, Any]]:
        now = now_micros()
        calls = []
        for _ in range(BATCH):
            save = prepare_save(f"save:{next(_numbers)}", record, "user", None, TAGS)
            fields = save.fields(None, now, lambda: 0)
            postings = [layout.posting_key(prefix, kind, term) for kind, term in index.postings(fields)]
            keys = [*layout.shard_keys(prefix), layout.record_key(prefix, save.key_bytes), *postings]
            calls.append((keys, [b"0", prefix, now, 1, b"1", 1, save.key_bytes, pack_record(*fields), len(postings)]))
        return (calls,), {}

    def evalshas(calls: list[tuple[list[bytes], list[Any]]]) -> None:
        async def each() -> None:
            for keys, args in calls:
                reply = await raw_redis.evalsha(scripts.SAVE.sha, len(keys), *keys, *args)
                assert reply[0] == b"OK"

        run(loop, each)

    benchmark.extra_info["batch"] = BATCH
    benchmark.pedantic(evalshas, setup=arguments, rounds=ROUNDS, iterations=1)


# -- load_many -------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_keys(rmanager: UnifiedStorageManager, loop: asyncio.AbstractEventLoop, record: dict[str, Any]) -> list[str]:
    keys = [f"many:{n:03d}" for n in range(MANY_KEYS)]
    run(loop, lambda: rmanager.save_many(dict.fromkeys(keys, record), "user", tags=TAGS))
    return keys


@pytest.mark.benchmark(group="redis-load-many-100")
def test_redis_load_many_raw_mget_unpackb(
    benchmark: Any, raw_redis: aioredis.Redis, loop: asyncio.AbstractEventLoop, record: dict[str, Any]
) -> None:
    keys = [f"raw:many:{n:03d}".encode() for n in range(MANY_KEYS)]
    run(loop, lambda: raw_redis.mset(dict.fromkeys(keys, msgpack.packb(record))))

    async def loads() -> list[Any]:
        for _ in range(MANY_BATCH):
            values = [msgpack.unpackb(value) for value in await raw_redis.mget(keys)]
        return values

    benchmark.extra_info["batch"] = MANY_BATCH
    values = benchmark.pedantic(run, (loop, loads), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert len(values) == MANY_KEYS and values[0] == record


@pytest.mark.benchmark(group="redis-load-many-100")
def test_redis_load_many_manager(
    benchmark: Any,
    rmanager: UnifiedStorageManager,
    many_keys: list[str],
    loop: asyncio.AbstractEventLoop,
    record: dict[str, Any],
) -> None:
    async def loads() -> dict[str, Any]:
        for _ in range(MANY_BATCH):
            items = await rmanager.load_many(many_keys, "user")
        return items

    benchmark.extra_info["batch"] = MANY_BATCH
    items = benchmark.pedantic(run, (loop, loads), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert len(items) == MANY_KEYS and items[many_keys[0]].data == record


# -- search ----------------------------------------------------------------------


class SearchStore:
    """A namespace of ``size`` items (content type ``item``): 200 tagged hot=yes, 1000
    tagged thousand=yes, the others cold=yes; filled with ``provider.save_many``."""

    def __init__(self, port: int, size: int, loop: asyncio.AbstractEventLoop, record: dict[str, Any]) -> None:
        self.size = size
        self.namespace = f"bench-{size // 1000}k"
        self.manager, self.provider = redis_manager(port, self.namespace, "item")
        groups: dict[str, list[str]] = {"hot": [], "thousand": [], "cold": []}
        for n in range(size):
            group = "hot" if n % (size // 200) == 0 else "thousand" if n % (size // 1000) == 1 else "cold"
            groups[group].append(f"item:{n:07d}")
        for group, keys in groups.items():
            for start in range(0, len(keys), FILL_CHUNK):
                chunk = dict.fromkeys(keys[start : start + FILL_CHUNK], record)
                run(loop, lambda chunk=chunk, group=group: self.provider.save_many(chunk, "item", tags={group: "yes"}))

    def search(self, loop: asyncio.AbstractEventLoop, query: StorageQuery) -> int:
        async def count() -> int:
            return sum([1 async for _ in self.manager.search(query)])

        return int(run(loop, count))


@pytest.fixture(scope="module")
def store_20k(redis_port: int, loop: asyncio.AbstractEventLoop, record: dict[str, Any]) -> Iterator[SearchStore]:
    store = SearchStore(redis_port, 20_000, loop, record)
    yield store
    run(loop, store.manager.cleanup)


@pytest.fixture(scope="module")
def store_200k(
    redis_port: int, loop: asyncio.AbstractEventLoop, record: dict[str, Any], large_items: int
) -> Iterator[SearchStore]:
    store = SearchStore(redis_port, large_items, loop, record)
    yield store
    run(loop, store.manager.cleanup)


async def commandstats(client: aioredis.Redis) -> Counter[str]:
    """Calls so far, by command (``INFO commandstats``), without INFO's own."""
    info = await client.info("commandstats")
    calls = Counter({name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()})
    del calls["info"]
    return calls


def count_search(
    store: SearchStore,
    query: StorageQuery,
    raw: aioredis.Redis,
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[dict[str, int], int, int]:
    """One search of ``query`` in ``store`` (after a warm-up one): the commands the server
    ran for it, by name; the client's sends (round trips); and the hits."""
    store.search(loop, query)  # the client connected, the shards checked: this one is not counted
    sends = 0
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal sends
        sends += 1
        await send(self, *args, **kwargs)

    before = run(loop, lambda: commandstats(raw))
    with monkeypatch.context() as patch:
        patch.setattr(AbstractConnection, "send_packed_command", counted)
        hits = store.search(loop, query)
    after = run(loop, lambda: commandstats(raw))
    return dict(sorted((after - before).items())), sends, hits


def record_counts(benchmark: Any, commands: dict[str, int], round_trips: int) -> None:
    benchmark.extra_info["commands"] = sum(commands.values())
    benchmark.extra_info["by_command"] = " ".join(f"{name}:{calls}" for name, calls in commands.items())
    benchmark.extra_info["round_trips"] = round_trips


@pytest.mark.benchmark(group="redis-search-1000-hits")
def test_redis_search_1000_hits_raw_sscan_mget_undecoded(
    benchmark: Any, store_20k: SearchStore, raw_redis: aioredis.Redis, loop: asyncio.AbstractEventLoop
) -> None:
    """The search's reads by hand, the floor of its round trips: SSCAN pages of 256 of
    the same posting set, an MGET of each page's records; records not decoded."""
    prefix = layout.shard_prefix(store_20k.namespace.encode(), 0, 1)
    [(kind, term)] = index.query_postings(index.compile_query(StorageQuery(tags={"thousand": "yes"})).spec)
    posting = layout.posting_key(prefix, kind, term)

    async def reads() -> int:
        cursor, found = 0, 0
        while True:
            cursor, members = await raw_redis.sscan(posting, cursor, count=256)
            records = await raw_redis.mget([layout.record_key(prefix, member) for member in members])
            found += sum(1 for record in records if record is not None)
            if cursor == 0:
                return found

    assert benchmark.pedantic(run, (loop, reads), rounds=SEARCH_ROUNDS[1000], iterations=1, warmup_rounds=1) == 1000


@pytest.mark.benchmark(group="redis-search-1000-hits")
def test_redis_search_1000_hits_manager(
    benchmark: Any,
    store_20k: SearchStore,
    raw_redis: aioredis.Redis,
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    query = StorageQuery(tags={"thousand": "yes"})
    commands, round_trips, hits = count_search(store_20k, query, raw_redis, loop, monkeypatch)
    assert hits == 1000
    record_counts(benchmark, commands, round_trips)
    assert benchmark.pedantic(store_20k.search, (loop, query), rounds=SEARCH_ROUNDS[1000], iterations=1) == 1000


@pytest.mark.benchmark(group="redis-search-200-hits")
def test_redis_search_200_hits_in_20k(
    benchmark: Any,
    store_20k: SearchStore,
    raw_redis: aioredis.Redis,
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    query = StorageQuery(tags={"hot": "yes"})
    commands, round_trips, hits = count_search(store_20k, query, raw_redis, loop, monkeypatch)
    assert hits == 200
    record_counts(benchmark, commands, round_trips)
    assert benchmark.pedantic(store_20k.search, (loop, query), rounds=SEARCH_ROUNDS[200], iterations=1) == 200


@pytest.mark.benchmark(group="redis-search-200-hits")
def test_redis_search_200_hits_in_200k(
    benchmark: Any,
    store_20k: SearchStore,
    store_200k: SearchStore,
    raw_redis: aioredis.Redis,
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same search ten times the items: the same commands, the same round trips."""
    query = StorageQuery(tags={"hot": "yes"})
    small = count_search(store_20k, query, raw_redis, loop, monkeypatch)
    commands, round_trips, hits = count_search(store_200k, query, raw_redis, loop, monkeypatch)
    assert hits == 200
    assert (commands, round_trips) == small[:2]
    record_counts(benchmark, commands, round_trips)
    assert benchmark.pedantic(store_200k.search, (loop, query), rounds=SEARCH_ROUNDS[200], iterations=1) == 200


# -- the same, side by side in time ------------------------------------------------


@pytest.mark.benchmark(group="redis-interleaved")
def test_redis_interleaved_ratios(
    benchmark: Any,
    rmanager: UnifiedStorageManager,
    raw_redis: aioredis.Redis,
    many_keys: list[str],
    loop: asyncio.AbstractEventLoop,
    record: dict[str, Any],
) -> None:
    """The ratios above, measured so that machine noise falls on both sides alike: for each
    operation, PAIRS pairs of rounds (a round of the raw operation, then one of the manager's)
    one right after the other, each pair's ratio kept; ``extra_info`` holds each operation's
    median ratio and its 10th and 90th percentiles. (The time measured is the whole run.)"""
    pairs = int(os.environ.get("UNISTORE_BENCH_PAIRS", "40"))
    packed = msgpack.packb(record)
    raw_many = [f"raw:many:{n:03d}".encode() for n in range(MANY_KEYS)]
    run(loop, lambda: rmanager.save("upsert:2", record, "user", tags=TAGS))
    run(loop, lambda: raw_redis.mset(dict.fromkeys(raw_many, packed)))

    async def raw_set() -> None:
        await raw_redis.set(b"raw:pair:%d" % next(_numbers), msgpack.packb(record))

    async def raw_get() -> None:
        msgpack.unpackb(await raw_redis.get(b"raw:user:1"))

    async def raw_mget() -> None:
        [msgpack.unpackb(value) for value in await raw_redis.mget(raw_many)]

    operations: dict[str, tuple[Any, Any, int]] = {
        "save": (raw_set, lambda: rmanager.save(f"pair:{next(_numbers)}", record, "user", tags=TAGS), BATCH),
        "save_upsert": (raw_set, lambda: rmanager.save("upsert:2", record, "user", tags=TAGS), BATCH),
        "load": (raw_get, lambda: rmanager.load("user:1", "user"), BATCH),
        "load_many_100": (raw_mget, lambda: rmanager.load_many(many_keys, "user"), MANY_BATCH),
    }

    async def timed(operation: Any, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            await operation()
        return time.perf_counter() - started

    async def measure() -> dict[str, list[float]]:
        ratios: dict[str, list[float]] = {}
        for name, (raw, ours, count) in operations.items():
            await timed(raw, 20)
            await timed(ours, 20)
            ratios[name] = sorted([await timed(ours, count) / await timed(raw, count) for _ in range(pairs)])
        return ratios

    ratios = benchmark.pedantic(run, (loop, measure), rounds=1, iterations=1)
    for name, found in ratios.items():
        tenth, ninetieth = found[int(0.1 * len(found))], found[min(int(0.9 * len(found)), len(found) - 1)]
        benchmark.extra_info[name] = f"median {statistics.median(found):.2f}, p10 {tenth:.2f}, p90 {ninetieth:.2f}"
