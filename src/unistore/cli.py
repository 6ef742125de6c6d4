"""The ``unistore`` command.

``unistore demo [--store URL]`` saves, loads, searches and deletes a few items
on a store (the embedded default unless ``--store`` names another) and prints
each step with how long it took.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TextIO, TypeVar

from .core import NATIVE
from .errors import StorageError
from .manager import UnifiedStorageManager
from .metrics import MetricsManager
from .model import StorageQuery
from .urls import open_provider

#: Where ``demo`` keeps its items when no ``--store`` is given.
DEFAULT_DEMO_STORE = "memory://?namespace=demo"

_R = TypeVar("_R")


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
    out.write(f"unistore demo on {store} (native core: {'yes' if NATIVE else 'no'})\n")
    async with UnifiedStorageManager(metrics=MetricsManager()) as manager:
        manager.register_provider("fruit", provider)
        soon = datetime.now(timezone.utc) + timedelta(hours=1)
        fruits = {"apple": "red", "banana": "yellow", "cherry": "red"}
        for name, colour in fruits.items():
            await _timed(
                out,
                f"save   fruit:{name} tags={{'colour': {colour!r}}}",
                manager.save(
                    f"fruit:{name}",
                    {"name": name, "colour": colour},
                    "fruit",
                    expires_at=soon,
                    tags={"colour": colour},
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


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    stream = out if out is not None else sys.stdout
    parser = argparse.ArgumentParser(prog="unistore", description="unistore: one storage interface, many providers.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="save, load, search and delete a few items, with timings")
    demo.add_argument("--store", default=DEFAULT_DEMO_STORE, help="provider URL (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run_demo(args.store, stream))
    except StorageError as exc:
        sys.stderr.write(f"unistore: {exc}\n")
        return 1
    return 0
