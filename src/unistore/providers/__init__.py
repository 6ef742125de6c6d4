"""The providers that ship with unistore."""

from .base import StorageProvider
from .memory import MemoryStorageProvider

__all__ = ["MemoryStorageProvider", "StorageProvider"]
