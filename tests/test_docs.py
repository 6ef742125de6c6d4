"""The documentation's promises: every Python example runs as written, and every
public name has a docstring.

**Examples.** Every fenced ```` ```python ```` block of README.md and of every page
under docs/ is a complete program. Each runs as written, as a script in a
subprocess of its own (a fresh interpreter, so no block leans on another's
imports or state; with the test run's environment, so ``UNISTORE_PURE_PYTHON=1``
runs them on the pure core too), in an empty working directory, with ``-W error``
and a timeout, and must exit 0; the self-contained ones run several at a time.
The block's ``title`` (shown above it on the site) says what else it needs, and
nothing is left out silently:

- ``title="needs a Redis server"`` (any title that names Redis, but not a
  cluster): the block connects to ``localhost:6379``, as a reader's would; the
  test replaces that text, and only that, with the address of the suite's private
  redis-server (the ``redis_port`` fixture). A block so marked that does not
  contain ``localhost:6379`` fails: it would reach a server the test does not own.
- ``title="needs a Redis Cluster"``: the same with ``localhost:7000``, replaced by
  the first master of the suite's private 3-master cluster (``redis_cluster``);
  any node finds the rest.
- ``title="not run: <why>"``: a fragment that is not a program. Such blocks are
  counted: their number is pinned in ``NOT_RUN`` below, so a new one is a
  deliberate edit of this file, never a silent skip.

Blocks that share a Redis server use namespaces of their own and remove what
they wrote.

**Docstrings.** Every public module of the package (no name component with a
leading underscore) has a docstring, and so does every public name it exports
(its ``__all__``; without one, the public classes and functions it defines) and
every public method and property of those classes (defined in the class itself
or inherited from a unistore class that documents it: an override keeps the
contract its base documents).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import unistore

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: How many ```python blocks are marked ``not run: <why>``, page by page.
NOT_RUN: dict[str, int] = {}

#: What the test substitutes in blocks marked as needing a server.
REDIS_ADDRESS = "localhost:6379"
CLUSTER_ADDRESS = "localhost:7000"

#: Seconds one example may take (a few need a fork, a sleep or fsyncs; most take well under one).
TIMEOUT = 60
#: Examples run at once.
WORKERS = 4

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_TITLE = re.compile(r"""title\s*=\s*(?:"([^"]*)"|'([^']*)')""")


@dataclass(frozen=True)
class Block:
    """One ```python block: where it is, what it needs, and its source (dedented)."""

    page: str
    line: int
    kind: str  # "run", "redis", "cluster" or "not run"
    title: str
    source: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def _kind(title: str) -> str:
    lowered = title.lower()
    if lowered.startswith("not run"):
        return "not run"
    if "redis" in lowered:
        return "cluster" if "cluster" in lowered else "redis"
    return "run"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of one Markdown page, in order."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        info = match["info"].strip()
        language = info.split(None, 1)[0].lstrip("{.").rstrip("}") if info else ""
        if language not in ("python", "python3", "py"):
            continue
        title_match = _TITLE.search(info)
        title = next((group for group in title_match.groups() if group is not None), "") if title_match else ""
        indent = match["indent"]
        lines = match["body"].splitlines(keepends=True)
        body = "".join(line[len(indent) :] if line.startswith(indent) else line for line in lines)
        page = path.relative_to(ROOT).as_posix()
        blocks.append(Block(page, text.count("\n", 0, match.start()) + 1, _kind(title), title, body))
    return blocks


BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def test_the_pages_hold_the_examples_they_should() -> None:
    """The extraction itself works: README's example is found, and the pages hold many."""
    readme = [block for block in BLOCKS if block.page == "README.md"]
    assert [block.kind for block in readme] == ["run"]
    assert "asyncio.run(main())" in readme[0].source
    assert len([block for block in BLOCKS if block.kind == "run"]) >= 10
    assert len({block.page for block in BLOCKS}) >= 4


def test_blocks_are_found_in_every_fence_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tildes, indented fences (in a list), ``{.python}`` and titles: no Python block escapes
    the extraction; other languages (an interactive ``pycon`` session, a shell) are not Python."""
    page = tmp_path / "page.md"
    page.write_text(
        '~~~python\nprint(1)\n~~~\n\n- item\n\n    ```python title="not run: a fragment"\n    x = 1\n    ```\n\n'
        "```{.python3 title='needs a Redis Cluster'}\nprint(2)\n```\n\n```pycon\n>>> 1\n```\n\n```sh\nls\n```\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = [(block.line, block.kind, block.title, block.source) for block in python_blocks(page)]
    assert found == [
        (1, "run", "", "print(1)\n"),
        (7, "not run", "not run: a fragment", "x = 1\n"),
        (11, "cluster", "needs a Redis Cluster", "print(2)\n"),
    ]


def test_blocks_not_run_are_counted() -> None:
    """Every block left out says why, and their number per page is the pinned one."""
    skipped = [block for block in BLOCKS if block.kind == "not run"]
    for block in skipped:
        assert re.match(r"not run: \S", block.title), f'{block.name}: say why, as title="not run: <why>"'
    counts: dict[str, int] = {}
    for block in skipped:
        counts[block.page] = counts.get(block.page, 0) + 1
    assert counts == NOT_RUN, [block.name for block in skipped]


@dataclass(frozen=True)
class Outcome:
    """How one example's run ended."""

    command: list[str]
    returncode: int | None  # None: it ran past TIMEOUT and was killed
    output: str


def execute(source: str, workdir: Path) -> Outcome:
    """Run ``source`` as a script in ``workdir`` with ``-W error``; kill it after TIMEOUT."""
    script = workdir / "example.py"
    script.write_text(source, encoding="utf-8")
    command = [sys.executable, "-W", "error", str(script)]
    try:
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        return Outcome(command, None, f"{exc.stdout or ''!s}{exc.stderr or ''!s}")
    return Outcome(command, done.returncode, done.stdout + done.stderr)


def check(block: Block, outcome: Outcome) -> None:
    """Fail with the example's output unless it exited 0 in time."""
    where = f"{block.name} ({shlex.join(outcome.command)})"
    assert outcome.returncode is not None, f"{where} ran past {TIMEOUT} s:\n{outcome.output}"
    assert outcome.returncode == 0, f"{where} failed (exit {outcome.returncode}):\n{outcome.output}"


def _substituted(block: Block, address: str, replacement: str) -> str:
    assert address in block.source, f"{block.name} is marked {block.title!r} but does not connect to {address}"
    return block.source.replace(address, replacement)


RUNNABLE = [block for block in BLOCKS if block.kind == "run"]


@pytest.fixture(scope="module")
def example_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Outcome]]]:
    """The selected self-contained examples, started together (WORKERS at a time): most of
    an example's time is the interpreter starting and waiting on fsyncs, so they overlap well."""
    selected = {  # the test ids are the blocks' names
        item.callspec.id
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_example_runs"
    }
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        yield {
            block.name: pool.submit(execute, block.source, tmp_path_factory.mktemp("example"))
            for block in RUNNABLE
            if block.name in selected
        }


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.name)
def test_example_runs(block: Block, example_runs: dict[str, Future[Outcome]]) -> None:
    check(block, example_runs[block.name].result())


@pytest.mark.redis
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "redis"], ids=lambda block: block.name)
def test_redis_example_runs(block: Block, tmp_path: Path, redis_port: int) -> None:
    check(block, execute(_substituted(block, REDIS_ADDRESS, f"127.0.0.1:{redis_port}"), tmp_path))


@pytest.mark.redis
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "cluster"], ids=lambda block: block.name)
def test_redis_cluster_example_runs(block: Block, tmp_path: Path, redis_cluster: list[int]) -> None:
    check(block, execute(_substituted(block, CLUSTER_ADDRESS, f"127.0.0.1:{redis_cluster[0]}"), tmp_path))


def test_a_failing_example_fails(tmp_path: Path) -> None:
    """The runner itself: an example that raises, or that warns (``-W error``), does not pass."""
    block = Block("docs/example.md", 1, "run", "", "")
    for source in ("raise SystemExit(3)", "import warnings\nwarnings.warn('old', DeprecationWarning)"):
        outcome = execute(source, tmp_path)
        assert outcome.returncode not in (0, None)
        with pytest.raises(AssertionError, match=r"docs/example.md:1 .* failed"):
            check(block, outcome)
    with pytest.raises(AssertionError, match="does not connect to localhost:6379"):
        _substituted(Block("docs/example.md", 1, "redis", "needs a Redis server", "print(1)"), REDIS_ADDRESS, "x")


# -- docstrings ------------------------------------------------------------------------


def public_modules() -> list[str]:
    """The package and every module of it with no ``_``-prefixed name component."""
    found = (info.name for info in pkgutil.walk_packages(unistore.__path__, "unistore."))
    return ["unistore", *sorted(name for name in found if not any(part.startswith("_") for part in name.split(".")))]


def _has_own_docstring(obj: Any) -> bool:
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return False
    # A dataclass without a docstring gets its signature as one: that documents nothing.
    return not (inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("))


def _method_documented(cls: type, name: str) -> bool:
    """The method is documented in ``cls`` or in the unistore class it overrides."""
    for klass in cls.__mro__:
        if name in vars(klass) and (klass is cls or klass.__module__.split(".")[0] == "unistore"):
            member = vars(klass)[name]
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                member = member.fget
            doc = getattr(member, "__doc__", None)
            if isinstance(doc, str) and doc.strip():
                return True
    return False


def undocumented(module_name: str) -> list[str]:
    """The public names of one module that lack a docstring."""
    module = importlib.import_module(module_name)
    missing = [] if _has_own_docstring(module) else [f"{module_name} (the module)"]
    exported = getattr(module, "__all__", None)
    if exported is None:
        exported = [
            name
            for name, obj in vars(module).items()
            if not name.startswith("_")
            and (inspect.isclass(obj) or inspect.isfunction(obj))
            and obj.__module__ == module_name
        ]
    for name in exported:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue  # constants and type aliases: documented by a comment where they are defined
        if not _has_own_docstring(obj):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                is_method = isinstance(member, (staticmethod, classmethod, property)) or inspect.isroutine(member)
                if is_method and not _method_documented(obj, attr):
                    missing.append(f"{module_name}.{name}.{attr}")
    return missing


@pytest.mark.parametrize("module_name", public_modules())
def test_public_names_have_docstrings(module_name: str) -> None:
    assert undocumented(module_name) == []


def test_the_docstring_check_finds_what_lacks_one() -> None:
    """The check itself: a class, a method and a dataclass without docstrings are caught."""

    class Documented:
        """A class."""

        def method(self) -> None:
            """A method."""

    class Bare:
        def method(self) -> None:
            pass

    @dataclass
    class Record:
        value: int

    assert _has_own_docstring(Documented) and _method_documented(Documented, "method")
    assert not _has_own_docstring(Bare) and not _method_documented(Bare, "method")
    assert not _has_own_docstring(Record)
    assert "unistore.urls" in public_modules() and not any("._" in name for name in public_modules())
