"""What every verb of the ``unistore`` command shares: its default store, its exit
statuses, and the options read the same way by several verbs."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from urllib.parse import quote

from ..errors import ValidationError
from ..model import StorageQuery

#: The store every command uses when no ``--store`` is given: ``.unistore`` in the current directory.
DEFAULT_STORE = "lmdb://./.unistore"

#: The exit status of a command whose output pipe was closed (128 + SIGPIPE, as a shell reports it).
EXIT_PIPE_CLOSED = 141

#: The exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130


def tags_option(given: Sequence[str] | None) -> dict[str, str] | None:
    """``--tag k=v`` options as a mapping (None if there were none).

    Raises:
        ValidationError: a tag without ``=``, with an empty key, or a key given twice.
    """
    if not given:
        return None
    tags: dict[str, str] = {}
    for text in given:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise ValidationError(f"bad tag {text!r}: write it as key=value")
        if key in tags:
            raise ValidationError(
                f"tag {key!r} is given twice ({key + '=' + tags[key]!r} and {text!r}): an item has one value per tag"
            )
        tags[key] = value
    return tags


def query_of(args: argparse.Namespace, limit: int | None = None) -> StorageQuery:
    """The query the filter options (``--pattern``, ``--type``, ``--tag``) of a verb give."""
    return StorageQuery(pattern=args.pattern, content_type=args.type, tags=tags_option(args.tag), limit=limit)


@contextlib.contextmanager
def scratch_store(store: str | None, what: str) -> Iterator[str]:
    """``store``, or a new LMDB store in a temporary directory removed afterwards."""
    if store is not None:
        yield store
        return
    with tempfile.TemporaryDirectory(prefix=f"unistore-{what}-") as scratch:
        yield f"lmdb://{quote(scratch)}?namespace={what}"


__all__ = ["DEFAULT_STORE", "EXIT_INTERRUPTED", "EXIT_PIPE_CLOSED", "query_of", "scratch_store", "tags_option"]
