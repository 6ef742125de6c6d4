"""Plain helpers the test modules share (fixtures are in the conftest.py files).

Importable as ``helpers`` from any test module: pyproject.toml puts tests/ on the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timezone
from pathlib import Path
from typing import Any

from unistore import StorageProvider
from unistore.cli import main

#: The repository's root (its docs/, scripts/ and src/ are read by some tests).
ROOT = Path(__file__).resolve().parent.parent

#: Aware UTC, as every time a provider gives back is.
UTC = timezone.utc

#: What makes a fresh, empty provider (the ``provider_factory`` fixture's kind).
Factory = Callable[[], StorageProvider[Any]]


def fresh_namespace() -> str:
    """A namespace no other test uses (tests share the session's Redis database 0)."""
    return uuid.uuid4().hex


class Terminal(io.StringIO):
    """An output that says it is a terminal, as a tty does (for the table and the bars)."""

    def isatty(self) -> bool:
        return True


def run(*argv: str, out: io.StringIO | None = None) -> tuple[int, str]:
    """The ``unistore`` command run in this process: its exit status and what it wrote."""
    stream = out if out is not None else io.StringIO()
    status = main(list(argv), stream)
    return status, stream.getvalue()


@contextlib.asynccontextmanager
async def timeout(seconds: float) -> AsyncIterator[None]:
    """``asyncio.timeout`` (Python 3.11), on every Python the package supports: the block is
    cancelled after ``seconds`` and ``asyncio.TimeoutError`` raised in its place."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            yield
        return
    task = asyncio.current_task()
    assert task is not None
    fired = []
    handle = asyncio.get_running_loop().call_later(seconds, lambda: fired.append(task.cancel()))
    try:
        yield
    except asyncio.CancelledError:
        if fired:
            raise asyncio.TimeoutError from None
        raise
    finally:
        handle.cancel()
