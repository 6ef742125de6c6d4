"""Plain helpers the test modules share (fixtures are in the conftest.py files).

Importable as ``helpers`` from any test module: pyproject.toml puts tests/ on the path.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
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
