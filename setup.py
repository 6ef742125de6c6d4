"""Declares the native core's extension; everything else is in pyproject.toml.

Every ``ext/<name>.pyx`` becomes ``unistore.<name>`` (``ext/_core.pyx``:
``unistore._core``, with the ``ext/*.pxi`` parts it includes). Where it cannot be built (no C compiler, or
``UNISTORE_PURE_PYTHON=1`` at build time) the install is pure Python, which
works the same, slower, and ``unistore.NATIVE`` says False; the build prints
a warning saying so instead of failing. ``UNISTORE_DEBUG_BUILD=1`` compiles
with ``-O0 -g`` and Cython's bounds checks, for debuggers and memcheck.
"""

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the extension if this machine can; otherwise warn and install pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, or one that fails: the pure core still works
            self._warn(exc)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        sys.stderr.write(
            "\n*** unistore: the native core could not be built "
            f"({type(exc).__name__}: {exc}).\n"
            "*** Installing the pure-Python core instead: it works the same, more slowly.\n\n"
        )


def native_extensions() -> list:
    sources = sorted(Path("ext").glob("*.pyx"))
    if not sources or os.environ.get("UNISTORE_PURE_PYTHON") == "1":
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    debug = os.environ.get("UNISTORE_DEBUG_BUILD") == "1"
    flags = ["-O0", "-g"] if debug else ["-O3"]
    parts = sorted(str(part) for part in Path("ext").glob("*.pxi"))  # the .pyx includes them
    modules = [
        Extension(f"unistore.{source.stem}", [str(source)], depends=parts, extra_compile_args=flags)
        for source in sources
    ]
    return cythonize(modules, language_level=3, compiler_directives={"boundscheck": debug, "wraparound": debug})


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
