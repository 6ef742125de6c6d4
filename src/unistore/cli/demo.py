"""The ``demo`` verb: one store walked through save, load, search and delete, each step timed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable
from datetime import datetime, timedelta, timezone
from typing import TextIO, TypeVar

from ..core import NATIVE
from ..errors import StorageError, StoreNotFoundError, ValidationError
from ..manager import UnifiedStorageManager
from ..metrics import MetricsManager
from ..model import StorageQuery
from ..redaction import redact
from ..urls import open_existing, open_provider
from .options import scratch_store

_R = TypeVar("_R")


async def _timed(out: TextIO, label: str, step: Awaitable[_R]) -> _R:
    started = time.perf_counter()
    result = await step
    elapsed = (time.perf_counter() - started) * 1e6
    out.write(f"{elapsed:10.1f} µs  {label}\n")
    return result


async def _keys(manager: UnifiedStorageManager, query: StorageQuery) -> list[str]:
    return sorted([result.item.metadata.key async for result in manager.search(query)])


async def _found(store: str) -> tuple[bool, bool]:
    """Whether the namespace ``store`` names exists, and whether it holds a live item."""
    try:
        provider = await open_existing(store)
    except StoreNotFoundError:
        return False, False
    async with provider:
        return True, any([result async for result in provider.search(StorageQuery(limit=1))])


async def run_demo(store: str, out: TextIO, force: bool = False) -> None:
    """Walk one store through save, load, search and delete, printing each step; a namespace
    the demo made is removed again at the end.

    Raises:
        ValidationError: the store already holds data and ``force`` is not set.
    """
    existed, holds_data = await _found(store)
    if holds_data and not force:
        raise ValidationError(f"demo: {redact(store)} already holds data; add --force to write into it anyway")
    provider = open_provider(store)
    out.write(f"unistore demo on {redact(store)} (native core: {'yes' if NATIVE else 'no'})\n")
    fruits = {"apple": "red", "banana": "yellow", "cherry": "red"}
    async with UnifiedStorageManager(metrics=MetricsManager()) as manager:
        manager.register_provider("fruit", provider)
        try:
            await _demo_steps(manager, fruits, out)
        finally:  # a demo cut short (a closed pipe, ^C) leaves nothing in the store either
            with contextlib.suppress(StorageError):
                await manager.delete_many([f"fruit:{name}" for name in fruits], "fruit")
                if not existed:
                    await provider.drop_namespace()


async def _demo_steps(manager: UnifiedStorageManager, fruits: dict[str, str], out: TextIO) -> None:
    """The demo's steps, each timed and printed."""
    soon = datetime.now(timezone.utc) + timedelta(hours=1)
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
    red = await _timed(out, "search tags={'colour': 'red'}", _keys(manager, StorageQuery(tags={"colour": "red"})))
    out.write(f"           -> {red}\n")
    globbed = await _timed(out, "search pattern='fruit:[ab]*'", _keys(manager, StorageQuery(pattern="fruit:[ab]*")))
    out.write(f"           -> {globbed}\n")
    for name in fruits:
        deleted = await _timed(out, f"delete fruit:{name}", manager.delete(f"fruit:{name}", "fruit"))
        out.write(f"           -> {deleted}\n")
    left = await _keys(manager, StorageQuery(pattern="fruit:*"))
    out.write(f"left after delete: {left}\n")


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """``demo [--force]``: :func:`run_demo` on the store, or on a scratch one."""
    with scratch_store(args.store, "demo") as store:
        asyncio.run(run_demo(store, out, args.force))
    return 0


__all__ = ["cmd_demo", "run_demo"]
