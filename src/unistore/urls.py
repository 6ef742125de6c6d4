"""Build a provider from a URL: ``open_provider("memory://?namespace=x")``.

Each scheme maps to one opener; an opener takes the split URL and its query
parameters, pops what it understands, and anything left over is an error, so a
misspelt option never passes silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

from .errors import ValidationError
from .providers.base import StorageProvider
from .providers.memory import MemoryStorageProvider

Opener = Callable[[SplitResult, dict[str, str]], StorageProvider[Any]]


def _open_memory(url: SplitResult, params: dict[str, str]) -> StorageProvider[Any]:
    if url.netloc or url.path:
        raise ValidationError(f"url: memory:// takes no host or path, got {url.geturl()!r}")
    return MemoryStorageProvider(namespace=params.pop("namespace", "default"))


_OPENERS: dict[str, Opener] = {"memory": _open_memory}


def open_provider(url: str) -> StorageProvider[Any]:
    """The provider a URL names.

    Schemes: ``memory://`` (options: ``namespace``).

    Raises:
        ValidationError: an unknown scheme, a malformed URL or an unknown option.
    """
    if not isinstance(url, str):
        raise ValidationError(f"url must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    opener = _OPENERS.get(parts.scheme)
    if opener is None:
        known = ", ".join(f"{scheme}://" for scheme in sorted(_OPENERS))
        raise ValidationError(f"url: unknown scheme in {url!r}; known: {known}")
    params: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in params:
            raise ValidationError(f"url: option {name!r} is given twice in {url!r}")
        params[name] = value
    provider = opener(parts, params)
    if params:
        raise ValidationError(f"url: unknown option(s) {', '.join(sorted(params))} in {url!r}")
    return provider


__all__ = ["open_provider"]
