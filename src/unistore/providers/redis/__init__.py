"""The Redis provider (:mod:`.provider`), its key layout and its Lua scripts.

It needs redis-py and hiredis (its C reply parser, whose command packer the provider
uses too), which the ``redis`` extra installs: ``pip install 'unistore[redis]'``.
"""

try:  # checked here, to say what to install
    import hiredis  # noqa: F401
    import redis.asyncio  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "the Redis provider needs redis-py and hiredis, which unistore's 'redis' extra installs: "
        "pip install 'unistore[redis]'"
    ) from exc

from .provider import RedisStorageProvider

__all__ = ["RedisStorageProvider"]
