"""The one place that decides which core runs.

The native extension (Cython, ``ext/``) and the pure-Python twin
(:mod:`unistore._purecore`) export the same names with the same results. Until
the extension is built by ``setup.py``, every install runs the pure twin, and
``NATIVE`` says so. ``UNISTORE_PURE_PYTHON=1`` will force the pure twin.
"""

from __future__ import annotations

from . import _purecore
from ._purecore import *  # noqa: F403  # the twin's public names are the core's

#: True when the native extension is in use.
NATIVE = False

__all__ = ["NATIVE"]
__all__ += _purecore.__all__
