"""The providers that ship with unistore.

``RedisStorageProvider`` is imported on first use: it needs redis-py and hiredis, which the
``redis`` extra installs (``pip install 'unistore[redis]'``); the rest needs nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import StorageProvider
from .lmdb import LmdbEngine, LmdbStorageProvider
from .memory import MemoryStorageProvider

if TYPE_CHECKING:
    from .redis import RedisStorageProvider


def __getattr__(name: str) -> Any:
    if name == "RedisStorageProvider":
        from .redis import RedisStorageProvider  # noqa: PLC0415  (redis-py only when asked for)

        return RedisStorageProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LmdbEngine", "LmdbStorageProvider", "MemoryStorageProvider", "RedisStorageProvider", "StorageProvider"]
