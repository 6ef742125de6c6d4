"""LMDB across processes: persistence, concurrent writers, and writers killed mid-flight."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from unistore import StorageQuery
from unistore.providers.lmdb import LmdbEngine

WRITER = """
import asyncio, sys
from unistore.providers import LmdbStorageProvider

async def main(path, name, count):
    provider = LmdbStorageProvider(path, namespace="shared")

    async def one(n):
        key = f"{name}-{n}"
        await provider.save(key, {"writer": name, "n": n}, "t", tags={"writer": name, "all": "yes"})
        print(key, flush=True)  # printed only once the save has returned: acknowledged

    n = 0
    while count < 0 or n < count:
        await asyncio.gather(*(one(n + i) for i in range(16)))
        n += 16
    await provider.cleanup()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def run_writer(store: Path, name: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store), name, str(count)], stdout=subprocess.PIPE, text=True
    )


def test_written_in_one_process_read_in_another(tmp_path: Path) -> None:
    store = tmp_path / "store"
    writer = run_writer(store, "child", 32)
    out, _ = writer.communicate(timeout=120)
    assert writer.returncode == 0 and len(out.splitlines()) == 32
    engine = LmdbEngine(store, namespace="shared")
    assert engine.load("child-31").data == {"writer": "child", "n": 31}
    engine.save("parent", "from the parent", "t")
    engine.close()
    read = (
        "import asyncio, sys\n"
        "from unistore.providers import LmdbStorageProvider\n"
        "p = LmdbStorageProvider(sys.argv[1], namespace='shared')\n"
        "print(asyncio.run(p.load('parent')).data)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", read, str(store)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "from the parent", done.stderr


def test_four_processes_writing_at_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    writers = [run_writer(store, f"w{n}", 160) for n in range(4)]
    acknowledged = set()
    for writer in writers:
        out, _ = writer.communicate(timeout=300)
        assert writer.returncode == 0
        acknowledged.update(out.split())
    assert len(acknowledged) == 640
    engine = LmdbEngine(store, namespace="shared")
    everything = {r.item.metadata.key for r in engine.search(StorageQuery(tags={"all": "yes"}))}
    assert everything == acknowledged
    for n in range(4):
        mine = {r.item.metadata.key for r in engine.search(StorageQuery(tags={"writer": f"w{n}"}))}
        assert len(mine) == 160 and all(key.startswith(f"w{n}-") for key in mine)
    ids = {r.item.metadata.id for r in engine.search(StorageQuery())}
    assert len(ids) == 640
    assert engine.check().ok
    engine.close()


def test_writers_killed_at_random_moments_lose_nothing_acknowledged(tmp_path: Path) -> None:
    store = tmp_path / "store"
    chance = random.Random(os.environ.get("CRASH_SEED", "65"))
    acknowledged: list[str] = []
    for round_number in range(8):
        writer = run_writer(store, f"r{round_number}", -1)
        assert writer.stdout is not None
        first = writer.stdout.readline()  # running and writing
        time.sleep(chance.uniform(0.02, 0.4))
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate(timeout=60)
        lines = (first + rest).split("\n")
        acknowledged.extend(line for line in lines[:-1] if line)  # the last piece may be cut short
        engine = LmdbEngine(store, namespace="shared")
        for key in acknowledged:
            assert engine.load(key).data["writer"] == key.split("-")[0]
        report = engine.check()
        assert report.ok, report.problems
        assert report.records >= len(acknowledged)
        engine.close()
    assert len(acknowledged) > 8 * 16
