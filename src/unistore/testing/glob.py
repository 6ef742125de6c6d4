r"""The reference Redis glob: an independent reading of Redis's rules, for the model.

``pattern`` in a query is a Redis glob, byte for byte what ``SCAN MATCH`` accepts
(Redis's ``stringmatchlen`` in ``util.c``). This module translates a pattern into
a Python regular expression, as :func:`fnmatch.translate` does for shell globs,
and shares no code with unistore's core, so the model can hold the core to it.
tests/package/test_testing_kit.py holds it against a real redis-server.

Redis's rules, as its C code applies them to the UTF-8 bytes of pattern and key:

- ``?`` is one byte (``é`` is two); ``*`` any run of bytes; a run of stars is one.
- ``\x`` is ``x`` literally; a backslash that ends the pattern is a backslash.
- ``[...]`` is one byte of a set: ``^`` first negates it; ``\x`` in it is ``x``;
  ``a-z`` is a range, its ends swapped if reversed and compared as *signed*
  chars (so ``[\x80-a]`` holds every byte from 0x80 up and 0x00 to ``a``); a
  range may take ``]`` as its end (``[a-]`` is ``]`` to ``a``, and the class goes
  on); an empty class (``[]``) matches nothing; a class the pattern ends in is
  closed there (``[`` alone matches nothing, ``[^`` alone any byte).
- Redis gives up (no match) past 1000 nested stars: a pattern with more than
  1000 stars before its last element matches nothing.
- The empty key matches only the empty pattern (unistore's keys are never empty).

It is a test oracle, not a fast matcher: a pattern of many stars that fails to
match a long key can take Python's regex engine very long.

Examples:
    >>> glob_matches("user:?", "user:1"), glob_matches("user:?", "user:é")
    (True, False)
    >>> glob_matches("[a-]x]", "x"), glob_matches(r"a\*", "a*"), glob_matches("[^", "z")
    (True, True, True)
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

MAX_NESTED_STARS = 1000
"""Nested stars beyond which Redis's matcher returns "no match" (``util.c``)."""

_STAR, _QUESTION, _OPEN, _CLOSE, _BACKSLASH, _CARET, _DASH = b"*?[]\\^-"


def _signed(byte: int) -> int:
    """A byte as a C ``char`` compares on x86 and ARM64 Linux builds of Redis: signed."""
    return byte - 256 if byte >= 128 else byte


class _Class(NamedTuple):
    """One ``[...]`` element: the bytes it matches, and the index just past it."""

    members: frozenset[int]
    end: int


def _read_class(pattern: bytes, start: int) -> _Class:
    """The class whose ``[`` is at ``start - 1``."""
    size = len(pattern)
    at = start
    negated = at < size and pattern[at] == _CARET
    at += negated
    members: set[int] = set()
    while at < size and pattern[at] != _CLOSE:
        if pattern[at] == _BACKSLASH and size - at >= 2:  # an escape: the next byte, whatever it is
            at += 1
            members.add(pattern[at])
        elif size - at >= 3 and pattern[at + 1] == _DASH:  # a range, even one that ends in ']'
            low, high = sorted((_signed(pattern[at]), _signed(pattern[at + 2])))
            members.update(byte for byte in range(256) if low <= _signed(byte) <= high)
            at += 2
        else:
            members.add(pattern[at])
        at += 1
    chosen = frozenset(range(256)).difference(members) if negated else frozenset(members)
    return _Class(chosen, at + 1)


def _one_byte(members: frozenset[int]) -> str:
    """A regex for one byte of ``members`` (bytes read as latin-1 characters)."""
    if not members:
        return "(?!)"
    return "[" + "".join(re.escape(chr(byte)) for byte in sorted(members)) + "]"


class _Translation(NamedTuple):
    regex: re.Pattern[str]
    #: Whether Redis's matcher gives up before the last element (too many nested stars).
    too_deep: bool


@lru_cache(maxsize=4096)
def _translate(pattern: str) -> _Translation:
    raw = pattern.encode()
    size = len(raw)
    parts: list[str] = []
    stars = 0  # star runs met so far
    at = 0
    while at < size:
        byte = raw[at]
        if byte == _STAR:
            while at < size and raw[at] == _STAR:
                at += 1
            parts.append(".*?")  # lazy: a long run of stars that matches is found without backtracking
            stars += at < size  # Redis recurses for a star run with more pattern after it
            continue
        if byte == _QUESTION:
            parts.append(".")
        elif byte == _OPEN:
            element = _read_class(raw, at + 1)
            parts.append(_one_byte(element.members))
            at = element.end
            continue
        else:
            if byte == _BACKSLASH and size - at >= 2:
                at += 1
            parts.append(re.escape(chr(raw[at])))
        at += 1
    return _Translation(re.compile("".join(parts), re.DOTALL), stars > MAX_NESTED_STARS)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The regex that matches what the Redis glob ``pattern`` matches, over a key's
    UTF-8 bytes read as latin-1 (one character a byte): ``regex.fullmatch(key.encode().decode("latin-1"))``.
    Ignores Redis's nesting limit (see :func:`glob_matches`)."""
    return _translate(pattern).regex


def glob_matches(pattern: str, key: str) -> bool:
    """Whether Redis's ``SCAN MATCH pattern`` would return the key ``key``."""
    if not key:
        return not pattern
    translation = _translate(pattern)
    return not translation.too_deep and translation.regex.fullmatch(key.encode().decode("latin-1")) is not None
