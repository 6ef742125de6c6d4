"""The Redis provider (:mod:`.provider`), its key layout and its Lua scripts.

It needs redis-py, which the ``redis`` extra installs: ``pip install 'unistore[redis]'``.
"""

try:
    import redis.asyncio  # noqa: F401  (checked here, to say what to install)
except ImportError as exc:
    raise ImportError(
        "the Redis provider needs redis-py, which unistore's 'redis' extra installs: pip install 'unistore[redis]'"
    ) from exc

from .provider import RedisStorageProvider

__all__ = ["RedisStorageProvider"]
