"""LMDB across processes: persistence and concurrent writers. (Writers killed at random
moments: tests/robustness/test_crash.py.)"""

from __future__ import annotations

import subprocess
import sys
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
    while n < count:
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
