"""How the ``unistore`` command shows things: items and data as JSON, aligned columns,
progress bars (on a terminal only), and text made safe to print."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TextIO
from uuid import UUID

from ..model import StorageItem

Progress = Callable[[int, "int | None"], None]


def to_json(value: Any) -> Any:
    """``value`` (an item's data) as plain JSON values: a ``datetime`` as its ISO 8601
    text, a ``UUID`` as its canonical text, ``bytes`` as base64 text, a tuple as a
    list, a non-finite float as ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, and a
    mapping key that is not a string as the text of its own rendering. Walked
    without recursion: data nests as deep as the codec stores it."""
    top: list[Any] = [None]
    todo: list[tuple[Any, Any, Any]] = [(top, 0, value)]  # (where it goes, under what, what it is)
    while todo:
        into, slot, given = todo.pop()
        if isinstance(given, dict):
            made: Any = {}
            for key, item in given.items():
                name = key if isinstance(key, str) else _key_text(key)
                made[name] = None  # keeps the mapping's order
                todo.append((made, name, item))
        elif isinstance(given, (list, tuple)):
            made = [None] * len(given)
            todo.extend((made, at, item) for at, item in enumerate(given))
        else:
            made = _scalar(given)
        into[slot] = made
    return top[0]


def _scalar(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _key_text(key: Any) -> str:
    rendered = _scalar(key)
    return rendered if isinstance(rendered, str) else json.dumps(rendered)


class _Text(str):
    """A piece of JSON text already written (by :func:`encode`)."""


def encode(value: Any) -> str:
    """Plain JSON values as JSON text; deeper than ``json.dumps`` recurses, without recursion."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:
        pass
    parts: list[str] = []
    todo: list[Any] = [value]
    while todo:
        given = todo.pop()
        if isinstance(given, _Text):
            parts.append(given)
        elif isinstance(given, dict) and given:
            pending: list[Any] = []
            for at, (key, item) in enumerate(given.items()):
                pending += [_Text(", " * bool(at) + json.dumps(key, ensure_ascii=False) + ": "), item]
            todo += [_Text("}"), *reversed(pending), _Text("{")]
        elif isinstance(given, list) and given:
            pending = []
            for at, item in enumerate(given):
                pending += [_Text(", " * bool(at)), item]
            todo += [_Text("]"), *reversed(pending), _Text("[")]
        else:  # a scalar, {} or []
            parts.append(json.dumps(given, ensure_ascii=False))
    return "".join(parts)


def dumps(value: Any) -> str:
    """An item's data as JSON text (see :func:`to_json`)."""
    return encode(to_json(value))


#: What a terminal would act on rather than show: C0 and C1 controls, DEL, and bidi overrides.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """``text`` safe to print as one cell of one line: every control character
    (escape sequences, line breaks, bidi overrides) as its Python escape, ``\\x1b``."""
    return _CONTROLS.sub(lambda found: found.group().encode("unicode_escape").decode("ascii"), text)


def item_json(item: StorageItem[Any]) -> dict[str, Any]:
    """An item as one JSON object: its metadata and its data (see :func:`to_json`)."""
    meta = item.metadata
    return {
        "key": meta.key,
        "content_type": meta.content_type,
        "tags": meta.tags,
        "id": str(meta.id),
        "created_at": meta.created_at.isoformat(),
        "updated_at": meta.updated_at.isoformat(),
        "expires_at": None if meta.expires_at is None else meta.expires_at.isoformat(),
        "data": to_json(item.data),
    }


@contextlib.contextmanager
def progress_bar(out: TextIO, label: str) -> Iterator[Progress | None]:
    """A ``progress(done, total)`` callback drawing a rich progress bar on stderr
    when ``out`` is a terminal; None (no bar, no counting) in a pipe."""
    if not out.isatty():
        yield None
        return
    from rich.console import Console  # noqa: PLC0415  (rich only where a bar is drawn)
    from rich.progress import Progress as Bar  # noqa: PLC0415

    with Bar(console=Console(file=sys.stderr, force_terminal=True), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def columns(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Rows as aligned columns, the first left-aligned and the others right-aligned."""
    cells = [list(header)] + [[shown(str(cell)) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    for row in cells:
        first, *rest = row
        line = "  ".join(
            [first.ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
        )
        out.write(line.rstrip() + "\n")


__all__ = ["Progress", "columns", "dumps", "encode", "item_json", "progress_bar", "shown", "to_json"]
