"""A compacting backup of a store whose posting lists are long.

py-lmdb 3.0.0 (LMDB 0.9.36) dies of SIGSEGV in ``env.copy(compact=True)`` once one
dupsort key holds some 600 values, which every store with a common tag or content type
has; pyproject.toml keeps that release out. The copy runs in a child process, so a crash
fails this test instead of ending the run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from unistore import StorageQuery
    from unistore.providers import LmdbStorageProvider

    async def main(source, copy):
        async with LmdbStorageProvider(source, durability="none") as provider:
            await provider.save_many({f"k{n}": n for n in range(2000)}, "t", tags={"colour": "red"})
            await provider.delete_many([f"k{n}" for n in range(0, 2000, 3)])
            await provider.backup(copy, compact=True)
        async with LmdbStorageProvider(copy) as restored:
            found = [r.item.data async for r in restored.search(StorageQuery(tags={"colour": "red"}))]
            report = await restored.check()
        print(len(found), sorted(found) == [n for n in range(2000) if n % 3], report.ok)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_a_compacting_backup_of_long_posting_lists_holds_every_item(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "store"), str(tmp_path / "copy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["1333", "True", "True"]
