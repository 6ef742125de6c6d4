"""The ``migrate`` verb: :func:`unistore.migrate.copy` between two stores, with a report."""

from __future__ import annotations

import argparse
from typing import TextIO

from ..errors import ValidationError
from ..migrate import copy
from ..redaction import redact
from ..urls import namespace_of, namespace_urls, open_existing, open_lasting, with_namespace
from .options import query_of
from .render import progress_bar


async def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    """``migrate SRC DST``: copy the items, verbatim, and verify both sides: of every namespace
    of the source, each into its namesake in the target, or, where either URL names a
    namespace, of the source's one namespace into the target as given."""
    given = args.pattern is not None or args.type is not None or args.tag
    query = query_of(args) if given else None
    sources = await namespace_urls(args.source)  # (the source's one, if its URL names one)
    target_namespace = namespace_of(args.target)
    if namespace_of(args.source) is not None or target_namespace is not None:
        if len(sources) > 1:
            raise ValidationError(
                f"migrate: {redact(args.source)} holds {len(sources)} namespaces and the target names one "
                f"({target_namespace!r}); leave ?namespace= out of the target to copy each into its "
                "namesake, or name one namespace in the source"
            )
        pairs = [(sources[0], args.target)]  # as given (the target's default namespace if it names none)
    else:
        pairs = [(url, with_namespace(args.target, namespace_of(url) or "default")) for url in sources]
    names, failed = [], False
    for source_url, target_url in pairs:
        name = namespace_of(source_url) or "default"
        # (a target refused after the source opened still closes the source)
        async with await open_existing(source_url) as source, open_lasting(target_url, "migrate") as target:
            with progress_bar(out, f"copying {name!r}") as progress:
                report = await copy(source, target, query=query, verify=not args.no_verify, progress=progress)
        verified = {True: "verified", False: "verification FAILED", None: "not verified"}[report.verified]
        out.write(
            f"{redact(source_url)} -> {redact(target_url)}: read {report.read}, written {report.written}, "
            f"unchanged {report.unchanged}; {verified}\n"
        )
        for problem in report.problems:
            out.write(f"problem: {problem}\n")
        names.append(name)
        failed = failed or not report.ok
    out.write(f"migrated {len(names)} namespace(s): {', '.join(map(repr, names))}\n")
    return 1 if failed else 0


__all__ = ["cmd_migrate"]
