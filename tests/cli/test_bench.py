"""``unistore.cli.bench``, the engine of ``unistore bench``, run for real on LMDB, Redis and
memory with tiny sizes. Nothing here asserts on speed: the shape of the answer, numbers
that are positive and finite, and that no scratch data is left behind."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from unistore import StorageError, ValidationError
from unistore.cli import bench
from unistore.cli.bench import BenchRow, _raised_as_storage_error
from unistore.providers.redis import scripts

REPETITIONS = 2


def tiny(url: object, progress: bench.Progress | None = None) -> list[BenchRow]:
    """The bench with the smallest sizes that still exercise every step."""
    return bench.run(url, progress, repetitions=REPETITIONS, operations=3, items=120)  # type: ignore[arg-type]


def check_rows(rows: list[BenchRow], search: str = "search(tag, 12 of 120)") -> None:
    assert [row.operation for row in rows] == ["save", "load", "load_many(100)", search]
    for row in rows:
        for figure in (row.unistore_us, row.raw_us, row.ratio):
            assert isinstance(figure, float) and math.isfinite(figure) and figure > 0, row


def test_lmdb_against_py_lmdb_leaves_nothing(tmp_path: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    rows = tiny(f"lmdb://{tmp_path}/store?durability=none&namespace=mine", lambda *step: calls.append(step))
    check_rows(rows)
    assert calls == [(n, 1 + 4 * REPETITIONS) for n in range(1, 2 + 4 * REPETITIONS)]
    assert os.listdir(tmp_path) == []  # the user's store was never made; the scratch store is gone


def test_an_existing_lmdb_store_is_not_touched(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "data.mdb").write_bytes(b"the user's data")
    check_rows(tiny(f"lmdb://{store}"))
    assert sorted(os.listdir(tmp_path)) == ["store"]
    assert os.listdir(store) == ["data.mdb"] and (store / "data.mdb").read_bytes() == b"the user's data"


def test_redis_against_redis_py_leaves_nothing(redis_port: int) -> None:
    client = redis.Redis(port=redis_port)
    client.set("user:key", b"the user's data")
    # (the database is the session's: earlier tests' keys with a time to live may expire meanwhile)
    lasting = {key for key in client.scan_iter() if client.pttl(key) == -1}
    before = set(client.keys())
    rows = tiny(f"redis://127.0.0.1:{redis_port}/0?namespace=mine")
    check_rows(rows)
    # Nothing is left but the answers of its counted deletes, which Redis drops within a minute.
    left = {key for key in client.scan_iter() if client.pttl(key) == -1}
    assert left == lasting and client.get("user:key") == b"the user's data"
    assert all(0 < client.pttl(key) <= scripts.TOKEN_TTL_MS for key in set(client.keys()) - before)
    client.delete("user:key")
    client.close()


def test_memory_against_a_dict() -> None:
    check_rows(tiny("memory://"))


async def test_measure_runs_inside_an_event_loop() -> None:
    check_rows(await bench.measure("memory://", repetitions=1, operations=1, items=100), "search(tag, 10 of 100)")


def test_the_ratio_is_unistore_over_raw() -> None:
    assert BenchRow("load", 6.0, 2.0).ratio == 3.0
    assert BenchRow("load", 6.0, 0.0).ratio == math.inf


@pytest.mark.parametrize(
    ("url", "sizes", "message"),
    [
        ("redis+cluster://127.0.0.1:7000", {}, "the bench runs on lmdb://, redis://, rediss:// and memory://"),
        ("file:///tmp/x", {}, "the bench runs on"),
        ("memory://", {"repetitions": 0}, "repetitions must be an int >= 1"),
        ("memory://", {"operations": True}, "operations must be an int >= 1"),
        ("memory://", {"items": 99}, "items must be an int >= 100"),
        (42, {}, "url must be a str"),
    ],
)
def test_bad_arguments_are_refused(url: object, sizes: dict[str, int], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        bench.run(url, **sizes)  # type: ignore[arg-type]


def test_a_bad_option_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unknown option"):
        tiny(f"lmdb://{tmp_path}/store?bogus=1")
    assert os.listdir(tmp_path) == []


def test_no_room_for_a_scratch_store_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot make a scratch directory"):
        tiny(f"lmdb://{tmp_path}/missing/store")


def test_an_unreachable_server_is_a_storage_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StorageError):
        tiny(f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.2")


def test_raw_engine_errors_become_storage_errors_and_ours_pass_unchanged() -> None:
    expected = r"bench on redis://user:\*\*\*@host: ValueError: boom"
    with pytest.raises(StorageError, match=expected) as raised, _raised_as_storage_error("redis://user:secret@host"):
        raise ValueError("boom")
    assert isinstance(raised.value.__cause__, ValueError)
    ours = ValidationError("ours")
    with pytest.raises(ValidationError) as passed, _raised_as_storage_error("memory://"):
        raise ours
    assert passed.value is ours


async def _writing(admin: redis.Redis, running: asyncio.Future[Any]) -> None:
    """Once the bench has written to the server (it is under way, far from its end)."""
    while True:  # (polled: the server says nothing when a key is written)
        if admin.dbsize() or running.done():
            return
        await asyncio.sleep(0.005)


@pytest.mark.watchdog(120)
async def test_an_interrupted_bench_does_not_wait_for_a_stalled_server(
    tmp_path: Path, redis_starter: Any, caplog: pytest.LogCaptureFixture
) -> None:
    process, port = redis_starter(tmp_path)
    try:
        running = asyncio.ensure_future(bench.measure(f"redis://127.0.0.1:{port}/0", items=20_000))
        with redis.Redis(port=port) as admin:
            await _writing(admin, running)  # (a fixed sleep let it finish first on a loaded machine)
            admin.client_pause(5000, all=True)
        await asyncio.sleep(0.2)
        assert not running.done()
        interrupted = time.monotonic()
        running.cancel()  # what Ctrl-C does to asyncio.run's task
        with pytest.raises(asyncio.CancelledError):
            await running
        assert time.monotonic() - interrupted < bench.INTERRUPTED_CLEANUP + 1
        assert "scratch data (unistore-bench-" in caplog.text and "may be left" in caplog.text
    finally:
        process.kill()
        process.wait()


@pytest.mark.watchdog(120)
async def test_a_server_lost_mid_bench_is_a_storage_error(tmp_path: Path, redis_starter: Any) -> None:
    process, port = redis_starter(tmp_path)
    running = asyncio.ensure_future(bench.measure(f"redis://127.0.0.1:{port}/0", items=20_000))
    with redis.Redis(port=port) as admin:
        await _writing(admin, running)
    assert not running.done()
    process.kill()
    process.wait()
    with pytest.raises(StorageError, match=r"unreachable|connecting"):
        await running  # its scratch data cannot be removed either: said, not hung
