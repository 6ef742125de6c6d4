"""What ships: the pinned public names, the typing marker, the doctests."""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import unistore
from helpers import ROOT
from unistore import errors

PINNED = {
    "UnifiedStorageManager",
    "StorageMonitor",
    "StorageProvider",
    "StorageItem",
    "StorageMetadata",
    "StorageQuery",
    "StorageResult",
    "StorageError",
    "ItemNotFoundError",
    "ProviderNotFoundError",
    "open_provider",
}


def test_pinned_names_are_exported() -> None:
    assert set(unistore.__all__) >= PINNED
    for name in unistore.__all__:
        assert getattr(unistore, name) is not None
    from unistore.metrics import MetricsManager
    from unistore.providers import MemoryStorageProvider

    assert unistore.MetricsManager is MetricsManager
    assert issubclass(MemoryStorageProvider, unistore.StorageProvider)


def test_error_tree() -> None:
    assert issubclass(errors.ItemNotFoundError, KeyError)
    assert issubclass(errors.ProviderNotFoundError, ValueError)
    assert issubclass(errors.ValidationError, ValueError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.StorageError)
    err = errors.ItemNotFoundError("no item under key 'k'", {"key": "k"})
    assert str(err) == "no item under key 'k'" and err.details == {"key": "k"}
    assert errors.StorageError("plain").details == {}


def test_native_flag_says_which_core_runs() -> None:
    from unistore import _purecore, core

    assert isinstance(unistore.NATIVE, bool)
    assert unistore.NATIVE is (core.Glob is not _purecore.Glob)
    if os.environ.get("UNISTORE_PURE_PYTHON") == "1":
        assert unistore.NATIVE is False
    elif os.environ.get("UNISTORE_REQUIRE_NATIVE") == "1":
        assert unistore.NATIVE is True


def test_typing_marker_ships() -> None:
    assert resources.files("unistore").joinpath("py.typed").is_file()


MODULES = sorted(info.name for info in pkgutil.walk_packages(unistore.__path__, "unistore."))


@pytest.mark.parametrize("module_name", ["unistore", *MODULES])
def test_doctests(module_name: str) -> None:
    module = importlib.import_module(module_name)
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_without_redis_py_everything_but_the_redis_provider_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py comes with the ``redis`` extra: a plain install imports, opens LMDB and
    memory stores, and says what to install when a Redis store is asked for."""
    import sys

    for name in list(sys.modules):
        if name == "redis" or name.startswith(("redis.", "unistore.providers.redis")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now fails, as where it is not installed
    import unistore.providers

    assert unistore.open_provider("memory://").namespace == "default"
    with pytest.raises(errors.StorageError, match=r"needs redis-py.*pip install 'unistore\[redis\]'") as caught:
        unistore.open_provider("redis://user:secret@h:1/0")
    assert "secret" not in str(caught.value) and isinstance(caught.value.__cause__, ImportError)
    with pytest.raises(ImportError, match="needs redis-py"):
        unistore.providers.RedisStorageProvider  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        unistore.providers.Nope  # noqa: B018


def _imports_script(src: Path) -> subprocess.CompletedProcess[str]:
    script = ROOT / "scripts" / "imports"
    command = [sys.executable, str(script), str(src)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)


def test_the_package_s_import_graph_has_no_circle_and_nothing_imported_from_above() -> None:
    checked = _imports_script(ROOT / "src")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no circle, none upward" in checked.stdout


@pytest.mark.parametrize(
    ("files", "said"),
    [
        (  # a circle, one side deferred into a function (it still ties the two)
            {"errors.py": "from . import redaction\n", "redaction.py": "def f():\n    from .errors import x\n"},
            "circle: unistore.errors, unistore.redaction",
        ),
        ({"errors.py": "from .providers import base\n", "providers/base.py": ""}, "upward: unistore.errors"),
        ({"stray.py": ""}, "module unistore.stray is in no layer"),
    ],
)
def test_the_import_check_fails_on_a_circle_an_upward_import_and_a_module_in_no_layer(
    tmp_path: Path, files: dict[str, str], said: str
) -> None:
    for name, text in {"__init__.py": "", "providers/__init__.py": "", **files}.items():
        (tmp_path / "unistore" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "unistore" / name).write_text(text)
    checked = _imports_script(tmp_path)
    assert checked.returncode == 1
    assert said in checked.stdout + checked.stderr


def test_the_kit_without_its_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # It failed with a bare ModuleNotFoundError for hypothesis.
    for name in [name for name in sys.modules if name == "unistore.testing" or name.startswith("unistore.testing.")]:
        monkeypatch.delitem(sys.modules, name)  # (put back as they were when the test ends)
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # what an install without the extra has
    with pytest.raises(ImportError) as refused:
        importlib.import_module("unistore.testing")
    assert isinstance(refused.value, errors.MissingExtraError)
    assert str(refused.value) == (
        "unistore.testing needs hypothesis, which is not installed: pip install 'unistore[testing]'"
    )
