"""Fixtures of the ``unistore`` command's tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the test's store lives."""
    return tmp_path / "store"


@pytest.fixture
def store(path: Path) -> str:
    """The URL of the test's store (durability none: the command's tests need no fsync)."""
    return f"lmdb://{path}?durability=none"
