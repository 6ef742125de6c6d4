"""The providers that ship with unistore."""

from .base import StorageProvider
from .lmdb import LmdbEngine, LmdbStorageProvider
from .memory import MemoryStorageProvider
from .redis import RedisStorageProvider

__all__ = ["LmdbEngine", "LmdbStorageProvider", "MemoryStorageProvider", "RedisStorageProvider", "StorageProvider"]
