"""The documentation's promises: every Python and shell example runs as written, and
every public name has a docstring.

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

**Shell examples.** The ```` ```console ```` blocks (and ```` ```bash ````,
```` ```sh ````) of a page are a session, run as a reader following the page
would: the blocks in page order, in one working directory of their own (so a
file or store made in one block is there in the next), each ``$ `` line a
command run with bash (``-o pipefail``), the ``unistore`` of the test run first
on PATH. The lines under a command, up to the next ``$ ``, are its output
(stdout and stderr together), compared line by line: ``…`` or ``...`` inside a
line matches anything there, and a line that is only ``...`` any number of
lines. A command exits 0, or 1 when its output shows the CLI's one-line
``unistore: ...`` error. The titles are the Python blocks' (``not run: <why>``,
counted in ``NOT_RUN`` with them; ``needs a Redis server``, whose commands'
``localhost:6379`` becomes the private server, which the test then rids of the
keys the page wrote). A block that runs holds ``$ `` commands only: a script
without prompts is marked not run.

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
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import typing
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

import unistore
from helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: How many blocks (```python and shell) are marked ``not run: <why>``, page by page.
NOT_RUN: dict[str, int] = {
    "docs/benchmarks.md": 3,
    "docs/index.md": 1,
    "docs/migration.md": 1,
    "docs/operations.md": 2,  # a benchmark run; which core an install runs (it depends on the install)
    "docs/testing-kit.md": 1,
}

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
    """One ```python or shell block: where it is, what it needs, and its source (dedented)."""

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


PYTHON = ("python", "python3", "py")
SHELL = ("console", "shell-session", "bash", "sh", "shell")


def fenced_blocks(path: Path, languages: tuple[str, ...]) -> list[Block]:
    """The fenced blocks of one Markdown page in one of ``languages``, in order."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        info = match["info"].strip()
        language = info.split(None, 1)[0].lstrip("{.").rstrip("}") if info else ""
        if language not in languages:
            continue
        title_match = _TITLE.search(info)
        title = next((group for group in title_match.groups() if group is not None), "") if title_match else ""
        indent = match["indent"]
        lines = match["body"].splitlines(keepends=True)
        body = "".join(line[len(indent) :] if line.startswith(indent) else line for line in lines)
        page = path.relative_to(ROOT).as_posix()
        blocks.append(Block(page, text.count("\n", 0, match.start()) + 1, _kind(title), title, body))
    return blocks


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of one Markdown page, in order."""
    return fenced_blocks(path, PYTHON)


def shell_blocks(path: Path) -> list[Block]:
    """The shell blocks (```console, ```bash, ```sh...) of one Markdown page, in order."""
    return fenced_blocks(path, SHELL)


BLOCKS = [block for page in PAGES for block in python_blocks(page)]
SHELL_BLOCKS = [block for page in PAGES for block in shell_blocks(page)]


def test_the_pages_hold_the_examples_they_should() -> None:
    """The extraction itself works: README's example is found, and the pages hold many."""
    readme = [block for block in BLOCKS if block.page == "README.md"]
    assert [block.kind for block in readme] == ["run"]
    assert "asyncio.run(main())" in readme[0].source
    assert len([block for block in BLOCKS if block.kind == "run"]) >= 10
    assert len({block.page for block in BLOCKS}) >= 4


def test_blocks_are_found_in_every_fence_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tildes, indented fences (in a list), ``{.python}`` and titles: no Python block escapes
    the extraction; other languages (an interactive ``pycon`` session, a shell) are not Python,
    and the shell block is found as one."""
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
    shells = [(block.line, block.kind, block.source) for block in shell_blocks(page)]
    assert shells == [(19, "run", "ls\n")]


def test_blocks_not_run_are_counted() -> None:
    """Every block left out (Python or shell) says why, and their number per page is the pinned one."""
    skipped = [block for block in BLOCKS + SHELL_BLOCKS if block.kind == "not run"]
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
    env = {**os.environ, "TMPDIR": str(workdir)}  # (an example's temporary stores go with its workdir)
    try:
        done = subprocess.run(
            command, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
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


# -- shell examples --------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One ``$ `` line of a shell block and the output shown under it."""

    line: int  # in the page
    command: str
    expected: list[str]


def session(block: Block) -> list[Command]:
    """The commands of a shell block: each ``$ `` line, with the lines after it up to the next
    ``$ `` as its expected output. A block that runs holds at least one, and nothing before it."""
    commands: list[Command] = []
    for number, line in enumerate(block.source.splitlines(), start=block.line + 1):
        if line.startswith("$ "):
            commands.append(Command(number, line[2:], []))
        else:
            assert commands, f"{block.name}: line {number} is neither a '$ ' command nor the output of one"
            commands[-1].expected.append(line)
    assert commands, f"{block.name} holds no '$ ' command: write it as a session, or mark it not run"
    return commands


_ELLIPSIS = re.compile(r"…|\.\.\.")


def output_pattern(expected: list[str]) -> re.Pattern[str]:
    """What the shown output stands for: ``…`` or ``...`` inside a line matches anything on
    that line, and a line that is only ``...`` (or ``…``) any number of lines."""
    parts = []
    for line in expected:
        if line.strip() in ("...", "…"):
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*".join(re.escape(piece) for piece in _ELLIPSIS.split(line.rstrip())) + r"\n")
    return re.compile("".join(parts))


def output_matches(expected: list[str], output: str) -> bool:
    """Whether ``output`` (trailing blanks of each line ignored) is what ``expected`` shows."""
    actual = "".join(line.rstrip() + "\n" for line in output.splitlines())
    return output_pattern(expected).fullmatch(actual) is not None


def is_error(expected: list[str]) -> bool:
    """The shown output is the CLI's one-line error: the command exits 1."""
    return any(line.startswith("unistore: ") for line in expected)


def run_page(blocks: list[Block], workdir: Path, redis_port: int = 0) -> None:
    """Run the shell blocks of one page in order, in one working directory (state carries
    from block to block, as for a reader following the page), with bash and the test
    interpreter's ``unistore`` first on PATH; each command's output (stdout and stderr
    together) must be the one shown, and its exit status 0 (1 when it shows an error).
    A block marked as needing a Redis server gets ``redis_port`` for ``localhost:6379``."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["TMPDIR"] = str(workdir)  # (the commands' scratch stores go with the page's workdir)
    for block in blocks:
        assert block.kind in ("run", "redis"), f"{block.name}: a shell example cannot be {block.title!r}"
        source = block.source
        if block.kind == "redis":
            source = _substituted(block, REDIS_ADDRESS, f"127.0.0.1:{redis_port}")
        for command in session(dataclasses.replace(block, source=source)):
            where = f"{block.page}:{command.line} $ {command.command}"
            try:
                done = subprocess.run(
                    ["bash", "-o", "pipefail", "-c", command.command],
                    cwd=workdir,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                pytest.fail(f"{where} ran past {TIMEOUT} s:\n{exc.stdout or ''!s}")
            shown = "".join(f"{line}\n" for line in command.expected)
            assert output_matches(command.expected, done.stdout), f"{where} printed:\n{done.stdout}instead of:\n{shown}"
            status = 1 if is_error(command.expected) else 0
            assert done.returncode == status, f"{where} exited {done.returncode}, not {status}:\n{done.stdout}"


def _pages_shell_blocks() -> dict[str, list[Block]]:
    pages: dict[str, list[Block]] = {}
    for block in SHELL_BLOCKS:
        if block.kind != "not run":
            pages.setdefault(block.page, []).append(block)
    return pages


#: The runnable shell blocks of each page that has any, in page order.
SHELL_PAGES = _pages_shell_blocks()


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(page, marks=[pytest.mark.redis] if any(b.kind == "redis" for b in blocks) else [])
        for page, blocks in SHELL_PAGES.items()
    ],
)
def test_shell_examples_run(page: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A page's shell examples run as a reader following the page would run them; what
    they write to the shared Redis server is removed afterwards (their keys are the ones
    that were not there before: no other test runs meanwhile)."""
    blocks = SHELL_PAGES[page]
    if not any(block.kind == "redis" for block in blocks):
        run_page(blocks, tmp_path)
        return
    port: int = request.getfixturevalue("redis_port")
    urls = "".join(block.source for block in blocks if block.kind == "redis")
    clients = [redis.Redis(port=port, db=int(db)) for db in set(re.findall(r"localhost:6379/(\d+)", urls)) | {"0"}]
    before = [set(client.scan_iter(count=1000)) for client in clients]
    try:
        run_page(blocks, tmp_path, port)
    finally:
        for client, keys in zip(clients, before, strict=True):
            if written := set(client.scan_iter(count=1000)) - keys:
                client.delete(*written)
            client.close()


def test_shell_sessions_are_checked(tmp_path: Path) -> None:
    """The runner itself: commands and their shown output are split at ``$ `` lines, ``…``
    and ``...`` elide within a line or (alone) any lines, and wrong output, a wrong exit
    status or a block with no command fails."""
    block = Block("docs/example.md", 3, "run", "", "$ echo a; echo b >&2\na\nb\n$ echo 'id 7'\nid …\n$ true\n")
    assert [(c.line, c.command, c.expected) for c in session(block)] == [
        (4, "echo a; echo b >&2", ["a", "b"]),
        (7, "echo 'id 7'", ["id …"]),
        (9, "true", []),
    ]
    run_page([block], tmp_path)
    assert output_matches(["x ...", "...", "z"], "x 1  \ny\ny\nz\n")
    assert output_matches(["...", "z"], "z\n")
    assert not output_matches(["x"], "x\ny\n")
    assert not output_matches(["a.b"], "axb\n")  # only an ellipsis is a wildcard
    failing = [
        ("$ echo a\nb\n", "printed"),
        ("$ false\n", "exited 1, not 0"),
        ("$ echo 'unistore: oops'\nunistore: oops\n", "exited 0, not 1"),
        ("echo a\n", "neither a '\\$ ' command"),
        ("", "holds no '\\$ ' command"),
    ]
    for source, message in failing:
        with pytest.raises(AssertionError, match=message):
            run_page([dataclasses.replace(block, source=source)], tmp_path)
    with pytest.raises(AssertionError, match="cannot be 'needs a Redis Cluster'"):
        run_page([Block("docs/example.md", 1, "cluster", "needs a Redis Cluster", "$ true\n")], tmp_path)


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
        if typing.get_origin(obj) is not None:
            continue  # a parameterised type alias (Python 3.10 calls one a class)
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
