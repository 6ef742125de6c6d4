r"""The reference Redis glob: an independent reading of Redis's rules, for the model.

``pattern`` in a query is a Redis glob, byte for byte what ``SCAN MATCH`` accepts
(Redis's ``stringmatchlen`` in ``util.c``). This module reads a pattern into its
elements (a star, or the set of bytes one position may hold) and matches them by
the textbook two-pointer method, and shares no code with unistore's core, so the
model can hold the core to it.
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

It is a test oracle, not a fast matcher, but never a slow one: a match costs at
most the pattern's elements times the key's bytes, whatever the stars (a regular
expression with many lazy stars can backtrack for minutes on a key it fails).

Examples:
    >>> glob_matches("user:?", "user:1"), glob_matches("user:?", "user:é")
    (True, False)
    >>> glob_matches("[a-]x]", "x"), glob_matches(r"a\*", "a*"), glob_matches("[^", "z")
    (True, True, True)
"""

from __future__ import annotations

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


#: ``?``: any one byte. (A star is None; every other element is the set of bytes one position holds.)
_ANY_BYTE = frozenset(range(256))
#: What the key's bytes past the pattern's last element meet: nothing matches them.
_PAST_THE_END: frozenset[int] = frozenset()


class _Glob(NamedTuple):
    elements: tuple[frozenset[int] | None, ...]
    #: Whether Redis's matcher gives up before the last element (too many nested stars).
    too_deep: bool


@lru_cache(maxsize=4096)
def _read(pattern: str) -> _Glob:
    raw = pattern.encode()
    size = len(raw)
    elements: list[frozenset[int] | None] = []
    stars = 0  # star runs met so far
    at = 0
    while at < size:
        byte = raw[at]
        if byte == _STAR:
            while at < size and raw[at] == _STAR:
                at += 1
            elements.append(None)
            stars += at < size  # Redis recurses for a star run with more pattern after it
            continue
        if byte == _QUESTION:
            elements.append(_ANY_BYTE)
        elif byte == _OPEN:
            element = _read_class(raw, at + 1)
            elements.append(element.members)
            at = element.end
            continue
        else:
            if byte == _BACKSLASH and size - at >= 2:
                at += 1
            elements.append(frozenset((raw[at],)))
        at += 1
    return _Glob(tuple(elements), stars > MAX_NESTED_STARS)


def _fits(elements: tuple[frozenset[int] | None, ...], data: bytes) -> bool:
    """Whether ``data`` is what ``elements`` spell (None: a star), ignoring Redis's nesting
    limit: one pass over ``data`` that, on a mismatch, lets the last star seen take one
    more byte and goes on from there."""
    at = here = 0
    star, star_from = -1, 0  # the last star seen, and where the bytes it took end
    while here < len(data):
        element = elements[at] if at < len(elements) else _PAST_THE_END
        if element is None:
            star, star_from = at, here
            at += 1
        elif data[here] in element:
            at += 1
            here += 1
        elif star >= 0:
            star_from += 1
            at, here = star + 1, star_from
        else:
            return False
    return all(element is None for element in elements[at:])


def glob_matches(pattern: str, key: str) -> bool:
    """Whether Redis's ``SCAN MATCH pattern`` would return the key ``key``."""
    if not key:
        return not pattern
    glob = _read(pattern)
    return not glob.too_deep and _fits(glob.elements, key.encode())
