"""A compacting backup of a store whose posting lists are long.

py-lmdb 3.0.0 (LMDB 0.9.36) dies of SIGSEGV in ``env.copy(compact=True)`` once one
dupsort key holds some 600 values, which every store with a common tag or content type
has; pyproject.toml keeps that release out. The copy runs in a child process, so a crash
fails this test instead of ending the run."""

from __future__ import annotations

import asyncio
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from unistore import StorageQuery, ValidationError
from unistore.providers import LmdbStorageProvider

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


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("compact", [False, True])
async def test_backups_at_once_into_one_directory_leave_one_whole_backup(tmp_path: Path, compact: bool) -> None:
    # A backup that lost the race for data.mdb (O_EXCL: another backup had just made it)
    # removed it as its own half-written file: the winner reported success and left
    # nothing. (The compact copy opened the same file as the other, unlocked.)
    provider = LmdbStorageProvider(tmp_path / "store", durability="none")
    items = {f"k{number}": "x" * 100 for number in range(3000)}
    await provider.save_many(items, "t")
    try:
        for round_ in range(6):
            dest = tmp_path / f"dest{round_}"
            outcomes = await asyncio.gather(
                *(provider.backup(dest, compact=compact) for _ in range(4)), return_exceptions=True
            )
            assert (dest / "data.mdb").is_file(), outcomes  # a backup said it was done
            assert outcomes.count(None) == 1, outcomes
            for outcome in outcomes:
                assert outcome is None or isinstance(outcome, ValidationError), repr(outcome)
            backup = LmdbStorageProvider(dest)
            try:
                assert len([result async for result in backup.search(StorageQuery())]) == len(items)
            finally:
                await backup.cleanup()
    finally:
        await provider.cleanup()


async def test_a_backup_through_a_link_to_a_directory_lands_there_private(tmp_path: Path) -> None:
    # Kept: dest may be a symbolic link to a directory (resolved first); data.mdb is made 0600.
    provider = LmdbStorageProvider(tmp_path / "store")
    await provider.save("k", 1, "t")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    try:
        await provider.backup(tmp_path / "link")
        assert stat.S_IMODE((tmp_path / "real" / "data.mdb").stat().st_mode) == 0o600
        with pytest.raises(ValidationError, match="already holds a store"):
            await provider.backup(tmp_path / "link", compact=True)
    finally:
        await provider.cleanup()


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("compact", [False, True])
async def test_a_backup_while_writers_run_is_a_consistent_store(tmp_path: Path, compact: bool) -> None:
    # Kept: each batch lands whole in the copy or not at all, and the copy checks clean.
    provider = LmdbStorageProvider(tmp_path / "store", durability="none")
    stop = False

    async def writer(number: int) -> None:
        round_ = 0
        while not stop:
            await provider.save_many({f"w{number}-{n}": round_ for n in range(50)}, "t", tags={"round": str(round_)})
            round_ += 1
            await asyncio.sleep(0)  # a save with durability "none" may finish without yielding

    writers = [asyncio.ensure_future(writer(number)) for number in range(3)]
    await asyncio.sleep(0.05)
    try:
        await provider.backup(tmp_path / "dest", compact=compact)
    finally:
        stop = True
        await asyncio.gather(*writers)
    backup = LmdbStorageProvider(tmp_path / "dest")
    try:
        assert (await backup.check()).ok
        rounds: dict[str, set[int]] = {}
        async for result in backup.search(StorageQuery()):
            rounds.setdefault(result.item.metadata.key.split("-")[0], set()).add(result.item.data)
        assert all(len(seen) == 1 for seen in rounds.values()), rounds  # one batch: one round
    finally:
        await backup.cleanup()
        await provider.cleanup()


_KILLED_MID_BACKUP = """
import asyncio, resource, signal, sys
from unistore.providers import LmdbStorageProvider

signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: a write past the limit now kills

async def main():
    provider = LmdbStorageProvider(sys.argv[1])
    await provider.save_many({f"k{number}": "x" * 1000 for number in range(2000)}, "t")  # ~3 MB
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))  # SIGXFSZ kills it
    await provider.backup(sys.argv[2], compact=sys.argv[3] == "compact")

asyncio.run(main())
"""


@pytest.mark.parametrize("compact", [False, True])
def test_a_backup_killed_part_way_leaves_no_data_file(tmp_path: Path, compact: bool) -> None:
    # A process killed during a backup left a truncated data.mdb: refused at open, but a
    # directory that looks like a backup, and a new backup into it was refused.
    dest = tmp_path / "dest"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_MID_BACKUP,
            str(tmp_path / "store"),
            str(dest),
            "compact" if compact else "plain",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    # The plain copy writes with write(2): the kernel kills the process. The compact one's
    # commit meets the limit as an I/O error and the backup fails: the same either way.
    assert done.returncode == (1 if compact else -signal.SIGXFSZ), done.stderr
    assert not (dest / "data.mdb").exists()

    async def again() -> None:
        provider = LmdbStorageProvider(tmp_path / "store")
        await provider.backup(dest, compact=compact)  # the directory is not taken
        await provider.cleanup()
        backup = LmdbStorageProvider(dest)
        assert len(await backup.load_many([f"k{number}" for number in range(2000)])) == 2000
        await backup.cleanup()

    asyncio.run(again())
