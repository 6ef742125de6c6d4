"""The package's version, read once: its one source is the version pyproject.toml gives
the installed package. A leaf, so that any layer may name it."""

from importlib.metadata import version

__version__ = version("unistore")
