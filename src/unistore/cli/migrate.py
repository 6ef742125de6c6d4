"""The ``migrate`` verb: :func:`unistore.migrate.copy` between two stores, with a report."""

from __future__ import annotations

import argparse
from typing import TextIO

from ..migrate import copy
from ..redaction import redact
from ..urls import open_existing, open_provider
from .options import query_of
from .render import progress_bar


async def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    """``migrate SRC DST``: copy the items, verbatim, and verify both sides."""
    given = args.pattern is not None or args.type is not None or args.tag
    query = query_of(args) if given else None
    # (a target URL refused after the source opened still closes the source)
    async with await open_existing(args.source) as source, open_provider(args.target) as target:
        with progress_bar(out, "copying") as progress:
            report = await copy(source, target, query=query, verify=not args.no_verify, progress=progress)
    verified = {True: "verified", False: "verification FAILED", None: "not verified"}[report.verified]
    out.write(
        f"{redact(args.source)} -> {redact(args.target)}: read {report.read}, written {report.written}, "
        f"unchanged {report.unchanged}; {verified}\n"
    )
    for problem in report.problems:
        out.write(f"problem: {problem}\n")
    return 0 if report.ok else 1


__all__ = ["cmd_migrate"]
