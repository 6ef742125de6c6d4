"""One Redis server in operation, against real redis-servers: memory running out and
eviction, a read-only replica, bounded batches under a watching client, a burst of
concurrent callers, cancellation and a stalled server, and an empty restart."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from helpers import UTC, timeout
from unistore import StorageConnectionError, StorageError, StorageQuery, ValidationError, open_provider
from unistore.cli import EXIT_INTERRUPTED, main
from unistore.providers import RedisStorageProvider
from unistore.providers.redis import layout

pytestmark = pytest.mark.redis

Starter = Callable[..., tuple[subprocess.Popen[bytes], int]]


@pytest.fixture
def server(tmp_path: Path, redis_starter: Starter) -> Iterator[Callable[..., int]]:
    """Starts private redis-servers with the options given; each is stopped when the test ends."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> int:
        workdir = tmp_path / f"server{len(started)}"
        workdir.mkdir()
        process, port = redis_starter(workdir, None, *options)
        started.append(process)
        return port

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


def _provider(port: int, **settings: Any) -> RedisStorageProvider:
    return RedisStorageProvider({"host": "127.0.0.1", "port": port, "namespace": uuid.uuid4().hex, **settings})


# -- memory ------------------------------------------------------------------------------


@pytest.mark.watchdog(120)
async def test_a_full_server_refuses_saves_cleanly_and_keeps_serving_reads(server: Callable[..., int]) -> None:
    port = server("--maxmemory", "8mb", "--maxmemory-policy", "noeviction")
    provider = _provider(port)
    try:
        saved: dict[str, int] = {}
        payload = "x" * 20_000

        async def fill() -> None:
            for n in range(10_000):
                await provider.save(f"k{n}", {"n": n, "pad": payload}, "doc", tags={"all": "yes"})
                saved[f"k{n}"] = n

        with pytest.raises(StorageError, match="out of memory") as refused:
            await fill()
        assert not isinstance(refused.value, StorageConnectionError)  # time does not fix it: not retried
        assert len(saved) > 50
        failed = f"k{len(saved)}"
        for attempt in range(100):  # a batch too (once the server is full again: its use moves a little)
            batch = {f"b{attempt}:{n}": {"pad": payload} for n in range(20)}
            refused = None
            try:
                await provider.save_many(batch, "doc", tags={"all": "yes"})
            except StorageError as exc:
                refused = exc
            if refused is not None:
                assert "out of memory" in str(refused)
                assert await provider.load_many(list(batch)) == {}  # nothing of it written
                break
            saved.update(dict.fromkeys(batch, 0))
        else:
            raise AssertionError("the server never refused a batch")
        # Reads go on; nothing is half-written.
        assert (await provider.load("k0")).data["n"] == 0
        assert len(await provider.load_many(list(saved))) == len(saved)
        found = {r.item.metadata.key async for r in provider.search(StorageQuery(tags={"all": "yes"}))}
        assert found == set(saved) and failed not in found
        report = await provider.check()
        assert report.ok and report.records == len(saved), report.problems
        # A delete frees memory even now, and then saves work again.
        assert await provider.delete_many(list(saved)[: len(saved) // 2]) == len(saved) // 2
        await provider.save(failed, {"n": -1}, "doc")
        assert (await provider.load(failed)).data == {"n": -1}
    finally:
        await provider.cleanup()


@pytest.mark.watchdog(120)
async def test_an_evicting_server_is_refused_at_first_use_unless_allowed(server: Callable[..., int]) -> None:
    port = server("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    refused = _provider(port)
    with pytest.raises(StorageError, match=r"maxmemory-policy allkeys-lru.*noeviction.*allow_eviction=True") as caught:
        await refused.load("k")
    assert not isinstance(caught.value, (StorageConnectionError, ValidationError))
    with pytest.raises(StorageError, match="allkeys-lru"):  # every operation, not the first one only
        await refused.save("k", 1, "doc")
    await refused.cleanup()
    for allowed in (
        _provider(port, allow_eviction=True),
        open_provider(f"redis://127.0.0.1:{port}/0?namespace={uuid.uuid4().hex}&allow_eviction=true"),
    ):
        await allowed.save("k", 1, "doc")
        assert (await allowed.load("k")).data == 1
        report = await allowed.check()  # it says what it knows
        assert any("maxmemory-policy allkeys-lru" in problem for problem in report.problems)
        await allowed.cleanup()
    with pytest.raises(ValidationError, match="allow_eviction must be true or false"):
        open_provider(f"redis://127.0.0.1:{port}/0?allow_eviction=maybe")
    with pytest.raises(ValidationError, match="allow_eviction must be True or False"):
        _provider(port, allow_eviction="yes")


@pytest.mark.watchdog(120)
async def test_check_reports_records_evicted_before_their_expiry(server: Callable[..., int]) -> None:
    # volatile-lru evicts keys that have an expiry: records due in an hour vanished and
    # check() used to say ok.
    port = server("--maxmemory", "8mb", "--maxmemory-policy", "volatile-lru")
    provider = _provider(port, allow_eviction=True)
    try:
        later = datetime.now(UTC) + timedelta(hours=1)
        with redis.Redis(port=port) as admin:
            for n in range(2000):
                await provider.save(f"k{n}", "x" * 20_000, "doc", expires_at=later)
                if admin.info("stats")["evicted_keys"] > 10:
                    break
            assert admin.info("stats")["evicted_keys"] > 10
        report = await provider.check()
        assert not report.ok
        assert any("is gone before its expiry: evicted" in problem for problem in report.problems)
        assert any("has evicted" in problem and "keys since it started" in problem for problem in report.problems)
    finally:
        await provider.cleanup()


# -- replicas ------------------------------------------------------------------------------


@pytest.mark.watchdog(120)
async def test_a_read_only_replica_serves_every_read_and_refuses_writes_clearly(server: Callable[..., int]) -> None:
    master = server("--repl-diskless-sync-delay", "0")
    replica = server("--replicaof", "127.0.0.1", str(master))
    namespace = uuid.uuid4().hex
    writer = RedisStorageProvider({"port": master, "namespace": namespace, "shards": 2})
    await writer.save_many({f"k{n}": n for n in range(100)}, "doc", tags={"all": "yes"})
    await writer.save("soon", 1, "doc", expires_at=datetime.now(UTC) + timedelta(hours=1))
    # (WAIT counts the replicas that have what its own connection wrote: a fresh one wrote
    # nothing, so it answered at once. Wait instead for the replica's offset to reach the master's.)
    with redis.Redis(port=master) as source, redis.Redis(port=replica) as copy:
        written = source.info("replication")["master_repl_offset"]
        deadline = time.monotonic() + 10
        while copy.info("replication").get("slave_repl_offset", -1) < written:
            assert time.monotonic() < deadline, "the replica did not catch up within 10 s"
            await asyncio.sleep(0.01)
    reader = RedisStorageProvider({"port": replica, "namespace": namespace, "shards": 2})
    try:
        assert (await reader.load("k7")).data == 7
        assert len(await reader.load_many([f"k{n}" for n in range(100)])) == 100
        assert len([r async for r in reader.search(StorageQuery(tags={"all": "yes"}))]) == 100
        assert len([r async for r in reader.search(StorageQuery(pattern="k1*"))]) == 11
        assert (await reader.check()).ok and (await reader.usage())["doc"].items == 101
        with pytest.raises(StorageError, match="read-only replica") as refused:
            await reader.save("k7", 8, "doc")
        assert not isinstance(refused.value, StorageConnectionError)
        with pytest.raises(StorageError, match="read-only replica"):
            await reader.delete("k7")
        assert (await writer.load("k7")).data == 7
        url = f"redis://127.0.0.1:{replica}/0?namespace={namespace}&shards=2"
        for argv in (
            ["get", "k7", "--type", "doc"],
            ["search", "--pattern", "k1*"],
            ["stats"],
            ["namespaces"],
            ["check"],
        ):
            out = io.StringIO()
            assert await asyncio.to_thread(main, [*argv, "--store", url], out) == 0, (argv, out.getvalue())
            if argv[0] == "get":
                assert json.loads(out.getvalue()) == 7  # the data, as JSON
    finally:
        await reader.cleanup()
        await writer.cleanup()


# -- batches ---------------------------------------------------------------------------------

#: Another client: PINGs the server in a loop until SIGTERM, then prints its slowest round trip.
PINGER = textwrap.dedent(
    """
    import signal, sys, time, redis
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    client = redis.Redis(port=int(sys.argv[1]))
    slowest = 0.0
    print("ready", flush=True)
    while not stop:
        start = time.perf_counter()
        client.ping()
        slowest = max(slowest, time.perf_counter() - start)
        time.sleep(0.001)
    print(slowest, flush=True)
    """
)


@pytest.mark.watchdog(600)
async def test_deleting_many_items_never_holds_the_server_for_long(server: Callable[..., int]) -> None:
    # One script per shard deleted everything: 200k items held the server 2.3 s, and a
    # read timeout then ran the script again, which found nothing and answered 0. Each script
    # must be a small share of the whole (the slow log records every command; measured as a
    # share, so a machine busy with other work slows both sides alike), and another client's
    # PING is answered between them.
    items = int(os.environ.get("UNISTORE_BATCH_ITEMS", "100000"))  # (500 scripts of 200 keys)
    port = server("--slowlog-log-slower-than", "0", "--slowlog-max-len", "1000000")
    provider = _provider(port, socket_timeout=1)
    try:
        for start in range(0, items, 5000):
            await provider.save_many({f"k{n}": n for n in range(start, start + 5000)}, "doc", tags={"all": "yes"})
        await provider.save_many({f"e{n}": n for n in range(5000)}, "doc", expires_at=datetime.now(UTC))
        with redis.Redis(port=port) as admin:
            admin.slowlog_reset()
            pinger = await asyncio.to_thread(
                subprocess.Popen, [sys.executable, "-c", PINGER, str(port)], stdout=subprocess.PIPE, text=True
            )
            try:
                assert pinger.stdout is not None and pinger.stdout.readline() == "ready\n"
                assert await provider.delete_matching(StorageQuery(tags={"all": "yes"})) == items
                assert await provider.purge_expired() == 5000
            finally:
                pinger.terminate()
                slowest = float(pinger.communicate(timeout=30)[0])
            assert slowest < 1, f"a PING waited {slowest * 1000:.1f} ms"
            log = admin.slowlog_get(1000000)
            scripts = [entry["duration"] for entry in log if entry["command"][:4].upper() == b"EVAL"]
            assert len(scripts) > 100 and max(scripts) < 0.02 * sum(scripts), (len(scripts), max(scripts), sum(scripts))
        assert [r async for r in provider.search(StorageQuery())] == []
        assert (await provider.check()).ok
    finally:
        await provider.cleanup()


# -- connections ---------------------------------------------------------------------------


@pytest.mark.watchdog(120)
async def test_a_burst_of_callers_waits_for_connections_instead_of_failing(server: Callable[..., int]) -> None:
    # redis-py's pool raised "Too many connections" past 100, reported as an unreachable server.
    port = server()
    for settings, most in (({}, 256), ({"max_connections": 4}, 4)):
        provider = _provider(port, **settings)
        try:
            await provider.save_many({f"k{n}": n for n in range(300)}, "doc")
            loaded = await asyncio.gather(*(provider.load(f"k{n}") for n in range(300)))
            assert [item.data for item in loaded] == list(range(300))
            with redis.Redis(port=port) as admin:
                assert int(admin.info("clients")["connected_clients"]) - 1 <= most
        finally:
            await provider.cleanup()
    url = f"redis://127.0.0.1:{port}/0?max_connections=2&namespace=x"
    assert open_provider(url)._settings.max_connections == 2  # type: ignore[attr-defined]
    for bad in ("0", "many"):
        with pytest.raises(ValidationError, match="max_connections must be"):
            open_provider(f"redis://127.0.0.1:{port}/0?max_connections={bad}")


# -- cancellation and stalls -------------------------------------------------------------


async def _looping(provider: RedisStorageProvider, write: bool) -> None:
    n = 0
    while True:
        if write:
            await provider.save(f"k{n % 10}", n, "doc", tags={"t": str(n % 3)})
        else:
            await provider.load(f"k{n % 10}")
        n += 1


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("write", [False, True], ids=["loads", "saves"])
async def test_a_cancelled_operation_stops_at_once(server: Callable[..., int], write: bool) -> None:
    # redis-py 8's send path wrapped each write in asyncio.wait_for, which on Python 3.10
    # and 3.11 swallows a cancellation that arrives as the write completes: 13 to 19 loops
    # of 20 went on.
    port = server()
    provider = _provider(port)
    try:
        await provider.save_many({f"k{n}": n for n in range(10)}, "doc")
        went_on = 0
        for _ in range(20):
            task = asyncio.ensure_future(_looping(provider, write))
            await asyncio.sleep(random.uniform(0.002, 0.03))
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=0.5)
            if not done:
                went_on += 1
                task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert went_on == 0
        timed_out = 0
        for _ in range(20):
            with pytest.raises(asyncio.TimeoutError):  # (the builtin TimeoutError from Python 3.11)
                async with timeout(random.uniform(0.002, 0.03)):
                    await _looping(provider, write)
            timed_out += 1
        assert timed_out == 20
        assert (await provider.load("k1")).metadata.key == "k1"  # and it works afterwards
        assert (await provider.check()).ok
    finally:
        await provider.cleanup()


@pytest.fixture
def stalled(server: Callable[..., int]) -> Iterator[tuple[int, Callable[[float], None]]]:
    """A server, and how to stall it (CLIENT PAUSE ALL for so many seconds) from another client."""
    port = server()
    admin = redis.Redis(port=port)

    def stall(seconds: float) -> None:
        admin.client_pause(int(seconds * 1000), all=True)

    yield port, stall
    admin.close()  # (not CLIENT UNPAUSE: it waits out the pause; the server is killed anyway)


@pytest.mark.watchdog(120)
async def test_operations_against_a_stalled_server_end_when_the_caller_says(
    stalled: tuple[int, Callable[[float], None]],
) -> None:
    port, stall = stalled
    provider = _provider(port)
    try:
        await provider.save("k", 1, "doc")
        for operation in (lambda: provider.load("k"), lambda: provider.save("k", 2, "doc")):
            stall(1)
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):  # (the builtin TimeoutError from Python 3.11)
                async with timeout(0.2):
                    await operation()
            assert time.monotonic() - started < 0.5
            await asyncio.sleep(1)  # (the pause ends)
        assert (await provider.load("k")).data in (1, 2)  # the provider works afterwards
    finally:
        await provider.cleanup()


@pytest.mark.watchdog(120)
async def test_a_stalled_server_costs_one_socket_timeout(stalled: tuple[int, Callable[[float], None]]) -> None:
    # With no timeout of its own a load waited 20.7 s (four attempts of 5 s): a command
    # that got no answer is not sent again.
    port, stall = stalled
    provider = _provider(port, socket_timeout=0.5)
    try:
        await provider.save("k", 1, "doc")
        stall(1.5)
        started = time.monotonic()
        with pytest.raises(StorageConnectionError, match=r"within 0\.5 s") as caught:
            await provider.load("k")
        assert 0.45 < time.monotonic() - started < 1.5
        assert caught.value.__cause__ is not None
    finally:
        await asyncio.sleep(1.5)  # (the pause ends)
        await provider.cleanup()
    assert RedisStorageProvider()._settings.socket_timeout == 5.0  # the stated default
    for bad in (0, -1, "5", True):
        with pytest.raises(ValidationError, match="socket_timeout must be a positive number"):
            _provider(port, socket_timeout=bad)


@pytest.mark.watchdog(120)
def test_ctrl_c_during_a_bench_exits_130(stalled: tuple[int, Callable[[float], None]]) -> None:
    # redis-py swallowed the KeyboardInterrupt's cancellation mid-command: the bench printed
    # a full table and exited 0 in 5 of 6 tries.
    port, stall = stalled
    script = Path(sys.executable).with_name("unistore")
    with (
        redis.Redis(port=port) as admin,
        subprocess.Popen(
            [str(script), "bench", "--store", f"redis://127.0.0.1:{port}/0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as bench,
    ):
        # The whole bench takes about a second: it is stalled as soon as it has written
        # something (a fixed sleep let it finish first on a loaded machine).
        while admin.dbsize() == 0 and bench.poll() is None:
            time.sleep(0.005)
        stall(10)  # whatever it is doing now, its next command waits
        time.sleep(0.3)
        assert bench.poll() is None
        interrupted = time.monotonic()
        bench.send_signal(signal.SIGINT)
        out, err = bench.communicate(timeout=30)
        assert bench.returncode == EXIT_INTERRUPTED, (bench.returncode, out[-500:], err[-500:])
        assert time.monotonic() - interrupted < 3  # at once, not when the pause ends
        assert "load" not in out  # no table of figures, as if it had finished


# -- restarts ------------------------------------------------------------------------------


@pytest.mark.watchdog(120)
async def test_a_write_after_an_empty_restart_records_the_shard_count_again(
    tmp_path: Path, redis_starter: Starter
) -> None:
    process, port = redis_starter(tmp_path)
    namespace = uuid.uuid4().hex
    provider = RedisStorageProvider({"port": port, "namespace": namespace, "shards": 2})
    try:
        await provider.save("k", 1, "doc")
        with pytest.raises(ValidationError, match="split over 2 shards"):
            await RedisStorageProvider({"port": port, "namespace": namespace, "shards": 3}).load("k")
        process.kill()
        process.wait()
        process, _ = redis_starter(tmp_path / "empty", port) if (tmp_path / "empty").mkdir() is None else (None, 0)
        with redis.Redis(port=port) as admin:
            assert admin.dbsize() == 0  # everything is gone, the markers too
        # The same provider: its connections broke; its next write records the count again.
        await _until_saved(provider, "k2")
        with redis.Redis(port=port) as admin:
            assert admin.get(layout.shards_key(namespace.encode())) == b"2"
        other = RedisStorageProvider({"port": port, "namespace": namespace, "shards": 3})
        with pytest.raises(ValidationError, match="split over 2 shards"):
            await other.load("k2")
        await other.cleanup()
        # A new process (a new provider) after another empty restart: its first write records it.
        process.kill()
        process.wait()
        process, _ = redis_starter(tmp_path / "empty2", port) if (tmp_path / "empty2").mkdir() is None else (None, 0)
        fresh = RedisStorageProvider({"port": port, "namespace": namespace, "shards": 2})
        await fresh.save("k3", 1, "doc")
        with redis.Redis(port=port) as admin:
            assert admin.get(layout.shards_key(namespace.encode())) == b"2"
        await fresh.cleanup()
    finally:
        await provider.cleanup()
        if process is not None:
            process.kill()
            process.wait()


async def _until_saved(provider: RedisStorageProvider, key: str) -> None:
    for _ in range(50):
        try:
            await provider.save(key, 1, "doc")
            return
        except StorageConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError("the provider did not recover")


@pytest.mark.watchdog(60)
async def test_a_server_that_hides_info_is_used_with_a_warning_and_one_without_scan_says_so(
    server: Callable[..., int], caplog: pytest.LogCaptureFixture
) -> None:
    port = server("--rename-command", "INFO", "", "--rename-command", "SCAN", "")
    provider = _provider(port)
    try:
        await provider.save("k", 1, "doc", tags={"t": "1"})  # the policy cannot be read: said, not refused
        assert "could not read the maxmemory-policy" in caplog.text
        assert (await provider.load("k")).data == 1
        assert len([r async for r in provider.search(StorageQuery(tags={"t": "1"}))]) == 1
        with pytest.raises(StorageError, match="unknown command") as refused:
            await provider.namespaces()  # every namespace of a server is found by SCAN
        assert not isinstance(refused.value, StorageConnectionError)
    finally:
        await provider.cleanup()
