"""The ``unistore`` command.

- ``unistore demo [--store URL]``: save, load, search and delete a few items and
  print each step with how long it took; on a fresh LMDB store in a temporary
  directory unless ``--store`` names another.
- ``unistore check [--store URL]``: verify that every index entry points at a
  record and every record is indexed; exit status 1 if not.
- ``unistore purge [--store URL]``: remove expired items.

``--store`` defaults to ``$UNISTORE_STORE``, else an LMDB store in
``$XDG_DATA_HOME/unistore`` (``~/.local/share/unistore``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

from .core import NATIVE
from .errors import StorageError
from .manager import UnifiedStorageManager
from .metrics import MetricsManager
from .model import StorageQuery
from .urls import open_provider, redact

_R = TypeVar("_R")


def default_store() -> str:
    """The store ``check`` and ``purge`` use when no ``--store`` is given."""
    configured = os.environ.get("UNISTORE_STORE")
    if configured:
        return configured
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"lmdb://{quote(str(Path(data_home).resolve() / 'unistore'))}"


async def _timed(out: TextIO, label: str, step: Awaitable[_R]) -> _R:
    started = time.perf_counter()
    result = await step
    elapsed = (time.perf_counter() - started) * 1e6
    out.write(f"{elapsed:10.1f} µs  {label}\n")
    return result


async def _search(manager: UnifiedStorageManager, query: StorageQuery) -> list[str]:
    return sorted([result.item.metadata.key async for result in manager.search(query)])


async def run_demo(store: str, out: TextIO) -> None:
    """Walk one store through save, load, search and delete, printing each step."""
    provider = open_provider(store)
    out.write(f"unistore demo on {redact(store)} (native core: {'yes' if NATIVE else 'no'})\n")
    async with UnifiedStorageManager(metrics=MetricsManager()) as manager:
        manager.register_provider("fruit", provider)
        soon = datetime.now(timezone.utc) + timedelta(hours=1)
        fruits = {"apple": "red", "banana": "yellow", "cherry": "red"}
        for name, colour in fruits.items():
            await _timed(
                out,
                f"save   fruit:{name} tags={{'colour': {colour!r}}}",
                manager.save(
                    f"fruit:{name}", {"name": name, "colour": colour}, "fruit", expires_at=soon, tags={"colour": colour}
                ),
            )
        item = await _timed(out, "load   fruit:apple", manager.load("fruit:apple", "fruit"))
        out.write(f"           -> {item.data} created {item.metadata.created_at.isoformat()}\n")
        red = await _timed(out, "search tags={'colour': 'red'}", _search(manager, StorageQuery(tags={"colour": "red"})))
        out.write(f"           -> {red}\n")
        globbed = await _timed(
            out, "search pattern='fruit:[ab]*'", _search(manager, StorageQuery(pattern="fruit:[ab]*"))
        )
        out.write(f"           -> {globbed}\n")
        for name in fruits:
            deleted = await _timed(out, f"delete fruit:{name}", manager.delete(f"fruit:{name}", "fruit"))
            out.write(f"           -> {deleted}\n")
        left = await _search(manager, StorageQuery(pattern="fruit:*"))
        out.write(f"left after delete: {left}\n")


async def _housekeep(store: str, method: str) -> Any:
    """Open ``store``, run its async housekeeping ``method``, close it."""
    provider = open_provider(store)
    try:
        action = getattr(provider, method, None)
        if action is None:
            raise StorageError(f"{redact(store)}: this kind of store has no {method.replace('_', ' ')}")
        return await action()
    finally:
        await provider.cleanup()


async def run_check(store: str, out: TextIO) -> bool:
    """Check one store's indexes; prints the counts and each problem. True if consistent."""
    report = await _housekeep(store, "check")
    out.write(
        f"{redact(store)}: {report.records} records, {report.ids} ids, {report.tag_entries} tag entries, "
        f"{report.type_entries} type entries, {report.created_entries} created entries, "
        f"{report.expires_entries} expiry entries\n"
    )
    for problem in report.problems:
        out.write(f"problem: {problem}\n")
    out.write("consistent\n" if report.ok else f"{len(report.problems)} problem(s)\n")
    return bool(report.ok)


async def run_purge(store: str, out: TextIO) -> None:
    """Remove the expired items of one store; prints how many."""
    removed = await _housekeep(store, "purge_expired")
    out.write(f"{redact(store)}: purged {removed} expired item(s)\n")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    stream = out if out is not None else sys.stdout
    parser = argparse.ArgumentParser(prog="unistore", description="unistore: one storage interface, many providers.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="save, load, search and delete a few items, with timings")
    demo.add_argument("--store", help="provider URL (default: a new LMDB store in a temporary directory)")
    for name, text in (("check", "verify the indexes of a store"), ("purge", "remove expired items")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--store", default=default_store(), help="provider URL (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo" and args.store is None:
            with tempfile.TemporaryDirectory(prefix="unistore-demo-") as scratch:
                asyncio.run(run_demo(f"lmdb://{quote(scratch)}?namespace=demo", stream))
        elif args.command == "demo":
            asyncio.run(run_demo(args.store, stream))
        elif args.command == "check":
            return 0 if asyncio.run(run_check(args.store, stream)) else 1
        else:
            asyncio.run(run_purge(args.store, stream))
    except StorageError as exc:
        sys.stderr.write(f"unistore: {exc}\n")
        return 1
    return 0
