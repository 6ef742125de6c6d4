"""Declares the native core's extension modules; everything else is in pyproject.toml.

Every ``ext/<name>.pyx`` becomes ``unistore.<name>`` (``ext/_core.pyx``: ``unistore._core``). With no Cython sources (or
``UNISTORE_PURE_PYTHON=1`` at build time) the install is pure Python, which
works everywhere: ``unistore.NATIVE`` then says False.
"""

import os
from pathlib import Path

from setuptools import setup


def native_extensions() -> list:
    sources = sorted(Path("ext").glob("*.pyx"))
    if not sources or os.environ.get("UNISTORE_PURE_PYTHON") == "1":
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    debug = os.environ.get("UNISTORE_DEBUG_BUILD") == "1"
    flags = ["-O0", "-g"] if debug else ["-O3"]
    modules = [
        Extension(f"unistore.{source.stem}", [str(source)], extra_compile_args=flags) for source in sources
    ]
    return cythonize(modules, language_level=3, compiler_directives={"boundscheck": debug, "wraparound": False})


setup(ext_modules=native_extensions())
