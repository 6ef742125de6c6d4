"""unistore: one async storage interface with pluggable providers.

>>> import asyncio
>>> from unistore import UnifiedStorageManager, open_provider
>>> async def main():
...     async with UnifiedStorageManager() as manager:
...         manager.register_provider("note", open_provider("memory://"))
...         await manager.save("greeting", {"text": "hi"}, "note", tags={"lang": "en"})
...         return (await manager.load("greeting", "note")).data
>>> asyncio.run(main())
{'text': 'hi'}
"""

from .core import NATIVE
from .errors import (
    ItemNotFoundError,
    ProviderNotFoundError,
    SerializationError,
    StorageConnectionError,
    StorageCorruptionError,
    StorageError,
    ValidationError,
)
from .manager import UnifiedStorageManager
from .metrics import MetricsManager, StorageMonitor
from .model import StorageItem, StorageMetadata, StorageQuery, StorageResult
from .providers.base import StorageProvider
from .urls import open_provider

__version__ = "0.1.0"

__all__ = [
    "NATIVE",
    "ItemNotFoundError",
    "MetricsManager",
    "ProviderNotFoundError",
    "SerializationError",
    "StorageConnectionError",
    "StorageCorruptionError",
    "StorageError",
    "StorageItem",
    "StorageMetadata",
    "StorageMonitor",
    "StorageProvider",
    "StorageQuery",
    "StorageResult",
    "UnifiedStorageManager",
    "ValidationError",
    "open_provider",
]
