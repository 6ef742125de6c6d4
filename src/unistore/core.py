"""The one place that decides which core runs.

The native extension (``unistore._core``, built from ``ext/_core.pyx``) and the
pure-Python twin (``unistore._purecore``) export the same names with the same
results; both stay importable side by side. The extension is used when it was
built; ``UNISTORE_PURE_PYTHON=1`` forces the twin; ``UNISTORE_REQUIRE_NATIVE=1``
makes a missing extension an import error (CI uses it to prove the build
carries it). Where the extension is missing and neither is set (an install on a
machine without a C compiler), the twin runs and a ``RuntimeWarning`` says so once.
``NATIVE`` says which one runs. The core's names are taken from the
chosen module one by one below, so that each can be found where it is used.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

from . import _purecore


def _chosen(pure_requested: bool, native_required: bool, load_native: Callable[[], ModuleType]) -> ModuleType:
    """The core module to use, given the two switches and a way to import the extension.

    Raises:
        ImportError: the extension is required but cannot be imported.
    """
    if pure_requested:
        return _purecore
    try:
        return load_native()
    except ImportError as exc:
        if native_required:
            raise
        warnings.warn(
            f"unistore: the native core is not installed ({exc}); running the pure-Python core, which "
            "works the same, more slowly. Reinstall where a C compiler and the Python headers are "
            "present to build it; UNISTORE_PURE_PYTHON=1 chooses the pure core without this warning.",
            RuntimeWarning,
            stacklevel=2,
        )
        return _purecore


_core = _chosen(
    os.environ.get("UNISTORE_PURE_PYTHON") == "1",
    os.environ.get("UNISTORE_REQUIRE_NATIVE") == "1",
    lambda: importlib.import_module("unistore._core"),
)

NATIVE = _core is not _purecore
"""True when the native (Cython) extension is in use, False on the pure-Python twin."""

if TYPE_CHECKING:  # the names as the pure twin types them
    from ._purecore import (
        FLAG_EXPIRES,
        GLOB_MAX_NESTING,
        HEADER_SIZE,
        RECORD_FORMAT_VERSION,
        Glob,
        QueryMatcher,
        RecordFields,
        glob_literal_prefix,
        glob_match,
        ids_from_entries,
        intersect_ids,
        pack_new,
        pack_record,
        union_ids,
        unpack_item,
        unpack_payload,
        unpack_record,
    )
else:
    FLAG_EXPIRES = _core.FLAG_EXPIRES
    GLOB_MAX_NESTING = _core.GLOB_MAX_NESTING
    HEADER_SIZE = _core.HEADER_SIZE
    RECORD_FORMAT_VERSION = _core.RECORD_FORMAT_VERSION
    Glob = _core.Glob
    QueryMatcher = _core.QueryMatcher
    RecordFields = _core.RecordFields
    glob_literal_prefix = _core.glob_literal_prefix
    glob_match = _core.glob_match
    ids_from_entries = _core.ids_from_entries
    intersect_ids = _core.intersect_ids
    pack_new = _core.pack_new
    pack_record = _core.pack_record
    union_ids = _core.union_ids
    unpack_item = _core.unpack_item
    unpack_payload = _core.unpack_payload
    unpack_record = _core.unpack_record

__all__ = [
    "FLAG_EXPIRES",
    "GLOB_MAX_NESTING",
    "HEADER_SIZE",
    "NATIVE",
    "RECORD_FORMAT_VERSION",
    "Glob",
    "QueryMatcher",
    "RecordFields",
    "glob_literal_prefix",
    "glob_match",
    "ids_from_entries",
    "intersect_ids",
    "pack_new",
    "pack_record",
    "union_ids",
    "unpack_item",
    "unpack_payload",
    "unpack_record",
]
