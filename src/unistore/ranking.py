"""The legacy memory store's ranking: the relevance ``score`` and ``highlights`` of
:meth:`unistore.UnifiedStorageManager.retrieve`'s results for a text.

A result's score is the share of the text's words (case-folded) found among the
strings of its data; its highlights are the passages around them.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import ValidationError
from .model import StorageItem, StorageResult

_WORD = re.compile(r"\w+")
#: Characters of context kept on each side of a matched word in a highlight.
HIGHLIGHT_CONTEXT = 40
#: The most highlights one result carries.
MAX_HIGHLIGHTS = 5


def _strings(data: Any) -> Iterator[str]:
    """Every ``str`` in ``data``, depth first: itself, or the values of its dicts and lists."""
    if isinstance(data, str):
        yield data
    elif isinstance(data, Mapping):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from _strings(value)


class Ranking:
    """The results of a text retrieval, scored as they come and ranked at the end."""

    def __init__(self, terms: frozenset[str], min_score: float) -> None:
        self._terms = terms
        self._min_score = min_score
        self._scored: list[tuple[float, str, int, StorageResult[Any]]] = []

    @classmethod
    def of(cls, text: str | None, min_score: float) -> Ranking | None:
        """The ranking for ``text`` (None without one), after checking the arguments.

        Raises:
            ValidationError: ``text`` is not a str with a word, or ``min_score`` is not in 0.0 to 1.0.
        """
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0.0 <= min_score <= 1.0:
            raise ValidationError(f"min_score must be a number from 0.0 to 1.0, got {min_score!r}")
        if text is None:
            return None
        if not isinstance(text, str):
            raise ValidationError(f"text must be a str, got {type(text).__name__}")
        terms = frozenset(word.casefold() for word in _WORD.findall(text))
        if not terms:
            raise ValidationError(f"text must contain a word to look for, got {text!r}")
        return cls(terms, float(min_score))

    def add(self, item: StorageItem[Any]) -> None:
        """Score ``item``; keep it if it scores above zero and at least ``min_score``."""
        found: set[str] = set()
        highlights: list[str] = []
        for string in _strings(item.data):
            spans = []
            for match in _WORD.finditer(string):
                word = match.group().casefold()
                if word in self._terms:
                    found.add(word)
                    spans.append(match.span())
            if spans and len(highlights) < MAX_HIGHLIGHTS:
                highlights.extend(_passages(string, spans)[: MAX_HIGHLIGHTS - len(highlights)])
        score = len(found) / len(self._terms)
        if score > 0.0 and score >= self._min_score:
            result = StorageResult(item, score, highlights)
            self._scored.append((-score, item.metadata.key, len(self._scored), result))

    def best(self, limit: int | None) -> list[StorageResult[Any]]:
        """The kept results, best first (equal scores in key order), at most ``limit``."""
        ranked = sorted(self._scored) if limit is None else heapq.nsmallest(limit, self._scored)
        return [result for _, _, _, result in ranked]


def _passages(string: str, spans: list[tuple[int, int]]) -> list[str]:
    """The passages of ``string`` around ``spans`` (overlapping ones merged), cut at
    word boundaries, with "…" where the string goes on."""
    windows: list[tuple[int, int]] = []
    for start, end in spans:
        low, high = max(0, start - HIGHLIGHT_CONTEXT), min(len(string), end + HIGHLIGHT_CONTEXT)
        while low > 0 and string[low - 1].isalnum():  # neither start nor end inside a word
            low -= 1
        while high < len(string) and string[high].isalnum():
            high += 1
        if windows and low <= windows[-1][1]:
            windows[-1] = (windows[-1][0], high)
        else:
            windows.append((low, high))
    return [
        ("…" if low > 0 else "") + string[low:high].strip() + ("…" if high < len(string) else "")
        for low, high in windows
    ]


__all__ = ["HIGHLIGHT_CONTEXT", "MAX_HIGHLIGHTS", "Ranking"]
