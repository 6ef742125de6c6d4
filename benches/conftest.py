"""Fixtures for the benchmarks: the anchors (raw py-lmdb, diskcache) and unistore,
fed the same ~200-byte record. Every benchmark runs BATCH operations per round,
so per-operation figures are the round time divided by BATCH."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import lmdb
import msgpack
import pytest

from unistore import MetricsManager, SyncStorageManager, UnifiedStorageManager
from unistore.cli.bench import RECORD
from unistore.providers import LmdbStorageProvider
from unistore.providers.lmdb import LmdbEngine

BATCH = 1000

# RECORD: a typical record, about 200 bytes once packed; the same one `unistore bench` times.
assert 180 <= len(msgpack.packb(RECORD)) <= 240


@pytest.fixture(scope="session")
def large_items() -> int:
    """Items in the searches' large stores ("200k"): ``UNISTORE_BENCH_LARGE_ITEMS``, 200,000 by default."""
    return int(os.environ.get("UNISTORE_BENCH_LARGE_ITEMS", "200000"))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def raw_lmdb(workdir: Path) -> Iterator[tuple[Any, Any]]:
    env = lmdb.open(str(workdir / "raw"), max_dbs=2, map_size=1 << 30)
    db = env.open_db(b"records")
    with env.begin(write=True, db=db) as txn:
        txn.put(b"user:1", msgpack.packb(RECORD))
    yield env, db
    env.close()


@pytest.fixture(scope="session")
def cache(workdir: Path) -> Iterator[diskcache.Cache]:
    cache = diskcache.Cache(str(workdir / "diskcache"))
    cache.set("user:1", RECORD)
    yield cache
    cache.close()


@pytest.fixture(scope="session")
def engine(workdir: Path) -> Iterator[LmdbEngine]:
    engine = LmdbEngine(workdir / "unistore", namespace="bench")
    engine.save("user:1", RECORD, "user", tags={"role": "admin"})
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def manager(workdir: Path, engine: LmdbEngine) -> UnifiedStorageManager:
    manager = UnifiedStorageManager(metrics=MetricsManager())
    manager.register_provider("user", LmdbStorageProvider(workdir / "unistore", namespace="bench"))
    return manager


@pytest.fixture(scope="session")
def sync_manager(workdir: Path, engine: LmdbEngine) -> Iterator[SyncStorageManager]:
    """A SyncStorageManager of the LMDB store ``engine`` wrote ``user:1`` to."""
    with SyncStorageManager(metrics=MetricsManager()) as manager:
        manager.register_provider("user", LmdbStorageProvider(workdir / "unistore", namespace="bench"))
        yield manager


@pytest.fixture(scope="session")
def batch() -> int:
    """Operations per benchmark round."""
    return BATCH


@pytest.fixture(scope="session")
def record() -> dict[str, Any]:
    """The record every benchmark stores and loads."""
    return RECORD


@pytest.fixture(scope="session")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of a private redis-server on 127.0.0.1 (no persistence), for the whole session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server (scripts/test does it)")
    workdir = tmp_path_factory.mktemp("redis")
    for _ in range(5):  # a port found free can be taken before the server binds it
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
        process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass  # not listening yet
            time.sleep(0.02)
        else:
            process.kill()
            process.wait()
            continue
        yield port
        process.terminate()
        process.wait(timeout=10)
        return
    pytest.fail("could not start redis-server on a free loopback port")
