"""The one place that decides which core runs.

The native extension (``unistore._core``, built from ``ext/_core.pyx``) and the
pure-Python twin (``unistore._purecore``) export the same names with the same
results; both stay importable side by side. The extension is used when it was
built; ``UNISTORE_PURE_PYTHON=1`` forces the twin; ``UNISTORE_REQUIRE_NATIVE=1``
makes a missing extension an import error (CI uses it to prove the build
carries it). ``NATIVE`` says which one runs.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

from . import _purecore


def choose(pure_requested: bool, native_required: bool, load_native: Callable[[], ModuleType]) -> ModuleType:
    """The core module to use, given the two switches and a way to import the extension.

    Raises:
        ImportError: the extension is required but cannot be imported.
    """
    if pure_requested:
        return _purecore
    try:
        return load_native()
    except ImportError:
        if native_required:
            raise
        return _purecore


_core = choose(
    os.environ.get("UNISTORE_PURE_PYTHON") == "1",
    os.environ.get("UNISTORE_REQUIRE_NATIVE") == "1",
    lambda: importlib.import_module("unistore._core"),
)

NATIVE = _core is not _purecore
"""True when the native (Cython) extension is in use, False on the pure-Python twin."""

if TYPE_CHECKING:
    from ._purecore import *  # noqa: F403  # the names, typed by the pure twin
else:
    globals().update({name: getattr(_core, name) for name in _purecore.__all__})

__all__ = ["NATIVE", "choose"]
__all__ += _purecore.__all__
