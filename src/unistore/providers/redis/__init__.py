"""The Redis provider (:mod:`.provider`), its key layout and its Lua scripts."""

from .provider import RedisStorageProvider

__all__ = ["RedisStorageProvider"]
