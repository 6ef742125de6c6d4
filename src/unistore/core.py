"""The one place that decides which core runs.

The native extension (Cython, ``ext/``) and the pure-Python twin
(:mod:`unistore._purecore`) export the same names with the same results. Until
the extension is built by ``setup.py``, every install runs the pure twin, and
``NATIVE`` says so. ``UNISTORE_PURE_PYTHON=1`` will force the pure twin.
"""

from __future__ import annotations

from ._purecore import (
    FORMAT_VERSION,
    GLOB_MAX_NESTING,
    HEADER_SIZE,
    Glob,
    QueryMatcher,
    RecordFields,
    glob_match,
    pack_record,
    unpack_record,
)

#: True when the native extension is in use.
NATIVE = False

__all__ = [
    "FORMAT_VERSION",
    "GLOB_MAX_NESTING",
    "HEADER_SIZE",
    "NATIVE",
    "Glob",
    "QueryMatcher",
    "RecordFields",
    "glob_match",
    "pack_record",
    "unpack_record",
]
