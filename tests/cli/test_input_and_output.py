"""The ``unistore`` command against a hostile user: data that nests as deep as the
codec allows, keys and names that carry rich markup or terminal control codes,
JSON that is not JSON, data too big for a command line, a demo cut short, URLs
that only look right, and files that only look like a store."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from helpers import Terminal, run
from unistore.cli import EXIT_INTERRUPTED, EXIT_PIPE_CLOSED, main
from unistore.providers import LmdbEngine


def _one_line(capsys: pytest.CaptureFixture[str], start: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(start) and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- deep data -----------------------------------------------------------------------------------


def test_json_nested_past_what_python_parses_is_one_line(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--store", store, "put", "k", "[" * 100_000 + "]" * 100_000) == (1, "")  # was a RecursionError
    _one_line(capsys, "unistore: bad JSON for the data of 'k': nested too deeply")


def _nested(depth: int) -> list[object]:
    top: list[object] = []
    inner = top
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    return top


@pytest.mark.parametrize("depth", [1000])  # the codec stores up to ~1025 levels; json.dumps stops near 1000
def test_data_nested_as_deep_as_the_codec_allows_prints(path: Path, store: str, depth: int) -> None:
    engine = LmdbEngine(path, durability="none")
    engine.save("deep", {"x": _nested(depth)}, "default", tags={"t": "1"})
    engine.close()
    text = "[" * depth + "]" * depth
    assert run("--store", store, "get", "deep") == (0, '{"x": ' + text + "}\n")  # was a RecursionError
    status, lines = run("--store", store, "search", "--json")
    assert status == 0 and lines.endswith(', "data": {"x": ' + text + "}}\n")
    assert run("--store", store, "search", out=Terminal())[0] == 0


# -- what reaches a terminal -----------------------------------------------------------------------


def test_markup_and_control_codes_in_stored_text_are_shown_literally(
    path: Path, store: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich's width: no cell wrapped
    assert run("--store", store, "put", "[/x]", '"[bold]"', "--tag", "[b]=[/]")[0] == 0
    assert run("--store", store, "put", "esc\x1b[31mRED\u202e", '"\\u009b2J"', "--type", "t\x1b]0;pwned\x07")[0] == 0
    status, table = run("--store", store, "search", out=Terminal())  # was a rich MarkupError traceback
    assert status == 0
    assert "[/x]" in table and "[b]=[/]" in table and '"[bold]"' in table  # rich markup is text here
    assert "\x1b[31mRED" not in table and "\u202e" not in table and "\x9b" not in table and "\x07" not in table
    assert "esc\\x1b[31mRED\\u202e" in table and '"\\x9b2J"' in table
    engine = LmdbEngine(path, namespace="line\nbreak\x1b[2J", durability="none")
    engine.save("k", 1, "a\nb")
    engine.close()
    # columns: one row per line, whatever the names hold
    status, text = run("--store", store, "namespaces")
    assert status == 0 and "\x1b" not in text and "line\\nbreak\\x1b[2J" in text
    assert len(text.splitlines()) == 3  # header, default, the other
    status, text = run("--store", store, "stats")
    assert status == 0 and "\x1b" not in text and "a\\nb" in text and "t\\x1b]0;pwned\\x07" in text
    assert len(text.splitlines()) == 6  # header, 3 types, (all), the namespaces covered
    assert capsys.readouterr().err == ""


# -- JSON that is not JSON, and data too big for argv ---------------------------------------------------


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "[1e400]", '{"a": -1e999}'])
def test_put_refuses_numbers_json_has_not(store: str, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--store", store, "put", "k", "--", text) == (1, "")  # was stored, and printed back as a string
    _one_line(capsys, "unistore: bad JSON for the data of 'k': ")
    assert not Path(store[len("lmdb://") : store.index("?")]).exists()


def test_put_reads_the_json_from_stdin_for_a_dash(
    store: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # past the 128 KiB a command line takes per argument
    big = json.dumps({"blob": "é" * 600_000, "n": list(range(1000)), "f": -2.5e-3}, ensure_ascii=False)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(big.encode())))
    assert run("--store", store, "put", "k", "-") == (0, "")
    assert run("--store", store, "get", "k") == (0, big + "\n")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'"\xff"')))
    assert run("--store", store, "put", "k2", "-") == (1, "")
    _one_line(capsys, "unistore: bad JSON for the data of 'k2': stdin is not UTF-8")


# -- a demo cut short ---------------------------------------------------------------------------------


class ClosesAfter(io.StringIO):
    """An output whose reader goes away after ``lines`` writes, as ``| head`` does."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.left = lines

    def write(self, text: str) -> int:
        if not self.left:
            raise BrokenPipeError(32, "Broken pipe")
        self.left -= 1
        return super().write(text)


@pytest.mark.parametrize("lines", [2, 8])  # after the first save, after the first delete
def test_a_demo_cut_short_leaves_nothing_in_the_store(store: str, lines: int) -> None:
    assert main(["demo", "--store", store], ClosesAfter(lines)) == EXIT_PIPE_CLOSED
    # was: the demo's fruit, left behind; now not even the namespace the demo made
    assert run("--store", store, "namespaces") == (1, "")


# -- URLs and files that only look right -------------------------------------------------------------


@pytest.mark.parametrize("database", ["abc", "1/2", "0x1", "-1"])
def test_a_redis_url_with_a_bad_database_is_refused(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    # refused before any connection: port 1 would say "unreachable" instead
    assert run("--store", f"redis://:secret@127.0.0.1:1/{database}", "get", "k") == (1, "")
    err = _one_line(capsys, "unistore: url: ")
    assert "secret" not in err


def test_an_empty_data_file_is_no_store_and_stays_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data.mdb").touch()
    for command in ("check", "get", "namespaces"):
        assert run("--store", f"lmdb://{tmp_path}", command, *(["k"] if command == "get" else [])) == (1, "")
        _one_line(capsys, f"unistore: no unistore store at '{tmp_path}'")
    assert (tmp_path / "data.mdb").stat().st_size == 0  # was: LMDB's first pages written into it


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/0?password=Hunter2",
        "redis://127.0.0.1:1/0?namespace=x&PassWord=Hunter2&y=1",
        "lmdb:///tmp/x?password=Hunter2#frag",
    ],
)
def test_a_password_in_the_query_is_never_printed(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--store", url, "get", "k") == (1, "")
    err = _one_line(capsys, "unistore: url: ")
    assert "Hunter2" not in err and "***" in err


class InterruptedAfter(ClosesAfter):
    """An output during whose ``lines``-th write the user presses Ctrl-C."""

    def write(self, text: str) -> int:
        if not self.left:
            raise KeyboardInterrupt
        self.left -= 1
        return io.StringIO.write(self, text)


def test_ctrl_c_is_one_line_and_the_demo_still_cleans_up(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["demo", "--store", store], InterruptedAfter(4)) == EXIT_INTERRUPTED
    )  # was a KeyboardInterrupt traceback
    assert capsys.readouterr().err == "unistore: interrupted\n"
    assert run("--store", store, "namespaces") == (1, "")  # not even the namespace the demo made
    assert "holds no namespace" in capsys.readouterr().err
