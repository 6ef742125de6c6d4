"""The providers that ship with unistore."""

from .base import StorageProvider
from .lmdb import LmdbStorageProvider
from .memory import MemoryStorageProvider

__all__ = ["LmdbStorageProvider", "MemoryStorageProvider", "StorageProvider"]
