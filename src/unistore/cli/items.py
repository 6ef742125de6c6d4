"""The verbs on items: ``put``, ``get``, ``rm`` and ``search``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

from ..codec import prepare_save
from ..errors import ItemNotFoundError, ValidationError
from ..model import ORDER_FIELDS, validate_order
from ..urls import open_existing, open_lasting
from .options import query_of, tags_option
from .render import dumps, encode, item_json, shown

#: What a search row shows of an item's data on a terminal, at most.
SHOWN_DATA = 60

#: What ``put`` reads its JSON from instead of the command line when given as ``-``.
STDIN = "-"


def _not_json(text: str) -> None:
    raise ValueError(f"{text} is not a JSON number")  # (json.loads would take NaN, Infinity, -Infinity)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is beyond a double's range")
    return number


def _data(text: str, key: str) -> Any:
    """The data ``put`` stores: ``text`` (or stdin, for ``-``) read as JSON, strictly
    (RFC 8259: no NaN, no Infinity, every number finite).

    Raises:
        ValidationError: not JSON, not UTF-8, or nested deeper than Python parses.
    """
    why = f"bad JSON for the data of {key!r}"
    if text == STDIN:
        try:
            text = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"{why}: stdin is not UTF-8 ({exc})") from None
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise ValidationError(f"{why}: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is one
        raise ValidationError(f"{why}: {exc}") from None


async def cmd_put(args: argparse.Namespace, out: TextIO) -> int:
    """``put KEY JSON``: store the data (creating the store and namespace if need be)."""
    data = _data(args.json, args.key)
    expires_at = None
    if args.ttl is not None:
        if not math.isfinite(args.ttl) or args.ttl <= 0:
            raise ValidationError(f"--ttl must be a positive number of seconds, got {args.ttl!r}")
        try:
            expires_at = datetime.now(timezone.utc) + timedelta(seconds=args.ttl)
        except OverflowError:
            raise ValidationError(f"--ttl {args.ttl!r} reaches past the year 9999") from None
    tags = tags_option(args.tag)
    prepare_save(args.key, data, args.type, expires_at, tags)  # all checked first: a refused put makes no store
    async with open_lasting(args.store, "put") as provider:
        await provider.save(args.key, data, args.type, expires_at=expires_at, tags=tags)
    return 0


async def cmd_get(args: argparse.Namespace, out: TextIO) -> int:
    """``get KEY``: print the data under the key as JSON."""
    async with await open_existing(args.store) as provider:
        item = await provider.load(args.key, content_type=args.type)
    out.write(dumps(item.data) + "\n")
    return 0


async def cmd_rm(args: argparse.Namespace, out: TextIO) -> int:
    """``rm KEY``: delete the item under the key (an error if there is none)."""
    async with await open_existing(args.store) as provider:
        deleted = await provider.delete(args.key, content_type=args.type)
    if not deleted:
        raise ItemNotFoundError(f"no item under key {args.key!r} with content type {args.type!r}", {"key": args.key})
    return 0


async def cmd_search(args: argparse.Namespace, out: TextIO) -> int:
    """``search``: the items a query matches in ``--order-by``'s order (all, or one page of
    ``--page-size``, whose next cursor goes to stderr), a table on a terminal and JSON lines
    otherwise."""
    if args.limit is not None and args.limit < 0:
        raise ValidationError(f"--limit must be 0 or more, got {args.limit}")
    if args.page_size is not None and args.page_size < 1:
        raise ValidationError(f"--page-size must be 1 or more, got {args.page_size}")
    if args.after is not None and args.page_size is None:
        raise ValidationError("--after names a page: give --page-size too")
    try:
        validate_order(args.order_by)
    except ValidationError:  # (said in the command's words)
        fields = ", ".join(ORDER_FIELDS)
        raise ValidationError(
            f"--order-by must be {fields}, with a leading - for descending; got {args.order_by!r}"
        ) from None
    query = query_of(args, args.limit)
    query.order_by = args.order_by
    async with await open_existing(args.store) as provider:
        if args.page_size is None:
            items = [result.item async for result in provider.search(query)]
            following = None
        else:
            page = await provider.page(query, args.page_size, args.after)
            items, following = [result.item for result in page.results], page.next
    if following is not None:
        sys.stderr.write(f"next: {following}\n")  # (stdout holds the items alone)
    if args.json or not out.isatty():
        for item in items:
            out.write(encode(item_json(item)) + "\n")
        return 0
    from rich.console import Console  # noqa: PLC0415  (rich only on a terminal)
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table("key", "type", "tags", "updated", "expires", "data")
    for item in items:
        meta = item.metadata
        data = shown(dumps(item.data))
        cells = (
            meta.key,
            meta.content_type,
            ", ".join(f"{key}={value}" for key, value in sorted(meta.tags.items())),
            meta.updated_at.isoformat(timespec="seconds"),
            "" if meta.expires_at is None else meta.expires_at.isoformat(timespec="seconds"),
        )
        # Text, not markup: a key like '[/x]' is shown as it is, not read as rich's markup.
        table.add_row(
            *(Text(shown(cell)) for cell in cells),
            Text(data if len(data) <= SHOWN_DATA else data[: SHOWN_DATA - 1] + "…"),
        )
    Console(file=out).print(table)
    out.write(f"{len(items)} item(s)\n")
    return 0


async def cmd_count(args: argparse.Namespace, out: TextIO) -> int:
    """``count``: how many live items the filters match."""
    async with await open_existing(args.store) as provider:
        out.write(f"{await provider.count(query_of(args))}\n")
    return 0


__all__ = ["SHOWN_DATA", "STDIN", "cmd_count", "cmd_get", "cmd_put", "cmd_rm", "cmd_search"]
