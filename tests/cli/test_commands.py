"""The ``unistore`` command: every subcommand in-process through ``main(argv, out)``,
and the installed console script in a subprocess for pipes."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis

from helpers import Terminal, fresh_namespace, run
from unistore import NATIVE, MetricsManager
from unistore.cli import DEFAULT_STORE, EXIT_PIPE_CLOSED, main, to_json, version
from unistore.providers import LmdbEngine


def _script() -> list[str]:
    script = Path(sys.executable).with_name("unistore")
    return [str(script)] if script.exists() else [shutil.which("unistore") or "unistore"]


# -- put, get, rm -----------------------------------------------------------------------------


def test_put_get_rm(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--store", store, "put", "k", '{"a": [1, 2], "b": null}') == (0, "")
    assert run("--store", store, "get", "k") == (0, '{"a": [1, 2], "b": null}\n')
    assert run("get", "k", "--store", store) == (0, '{"a": [1, 2], "b": null}\n')  # --store after the command too
    assert run("--store", store, "put", "k", '"note"', "--type", "note", "--tag", "lang=en", "--tag", "x=a=b") == (
        0,
        "",
    )
    assert run("--store", store, "get", "k", "--type", "note") == (0, '"note"\n')
    assert run("--store", store, "get", "k")[0] == 1  # replaced by the note: not of type default
    assert "unistore: no item under key 'k' with content type 'default'" in capsys.readouterr().err
    _, found = run("--store", store, "search", "--json")
    assert json.loads(found)["tags"] == {"lang": "en", "x": "a=b"}
    assert run("--store", store, "rm", "k") == (1, "")
    assert capsys.readouterr().err == "unistore: no item under key 'k' with content type 'default'\n"
    assert run("--store", store, "rm", "k", "--type", "note") == (0, "")
    assert run("--store", store, "get", "k", "--type", "note")[0] == 1


def test_put_with_a_ttl(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = datetime.now(timezone.utc)
    assert run("--store", store, "put", "k", "1", "--ttl", "0.2") == (0, "")
    _, found = run("--store", store, "search")
    expires = datetime.fromisoformat(json.loads(found)["expires_at"])
    assert timedelta(seconds=0.2) <= expires - before < timedelta(seconds=1.2)
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.01)
    assert run("--store", store, "get", "k")[0] == 1
    for ttl, message in (("0", "positive number"), ("nan", "positive number"), ("1e300", "past the year 9999")):
        assert run("--store", store, "put", "k", "1", "--ttl", ttl)[0] == 1
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["put", "k", "{x"], "unistore: bad JSON for the data of 'k': Expecting property name"),
        (["put", "k", "1", "--tag", "novalue"], "unistore: bad tag 'novalue': write it as key=value"),
        (["put", "k", "1", "--tag", "=v"], "unistore: bad tag '=v'"),
        (["put", "k", str(2**70)], "unistore: "),  # beyond msgpack's integers
        (["put", "", "1"], "unistore: key"),
    ],
)
def test_put_refuses_bad_input_and_writes_nothing(
    store: str, tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--store", store, *argv) == (1, "")
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "store" / "data.mdb").exists() or run("--store", store, "search") == (0, "")


def test_values_json_cannot_hold_are_rendered(store: str) -> None:
    stamp = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    ident = uuid.UUID(int=7)
    engine = LmdbEngine(store[len("lmdb://") : -len("?durability=none")], durability="none")
    engine.save("k", {"when": stamp, "id": ident, "raw": b"\x00\xff", 1: "int key", b"b": 2}, "default")
    engine.close()
    _, text = run("--store", store, "get", "k")
    assert json.loads(text) == {
        "when": "2024-05-06T07:08:09.123456+00:00",
        "id": "00000000-0000-0000-0000-000000000007",
        "raw": "AP8=",
        "1": "int key",
        "Yg==": 2,
    }
    assert to_json([float("nan"), float("inf"), -float("inf"), (1, 2), {None: 1}]) == [
        "NaN",
        "Infinity",
        "-Infinity",
        [1, 2],
        {"null": 1},
    ]


# -- reads never create --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "k"],
        ["rm", "k"],
        ["search"],
        ["stats"],
        ["namespaces"],
        ["check"],
        ["check", "--repair"],
        ["purge"],
        ["backup", "somewhere"],
    ],
)
def test_a_missing_store_is_an_error_and_nothing_is_created(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # a bare command: the default store, .unistore here
    assert run(*argv) == (1, "")
    assert capsys.readouterr().err == f"unistore: no unistore store at '{tmp_path}/.unistore'\n"
    assert os.listdir(tmp_path) == []


def test_a_missing_namespace_is_an_error_and_is_not_created(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--store", store, "put", "k", "1")[0] == 0
    for argv in (["get", "k"], ["search"], ["check"], ["purge"], ["stats"], ["namespaces"]):
        assert run("--store", store + "&namespace=typo", *argv) == (1, "")
        assert "has no namespace 'typo'" in capsys.readouterr().err
    assert [line.split()[:2] for line in run("--store", store, "namespaces")[1].splitlines()] == [
        ["namespace", "items"],
        ["default", "1"],
    ]


def test_the_root_directory_is_never_made_a_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("check", "--store", "lmdb:///") == (1, "")  # it once wrote data.mdb into /
    assert capsys.readouterr().err == "unistore: no unistore store at '/'\n"
    assert not Path("/data.mdb").exists()


def test_the_default_store_is_dot_unistore_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_STORE == "lmdb://./.unistore"
    assert run("put", "k", "1") == (0, "")
    assert (tmp_path / ".unistore" / "data.mdb").exists()
    assert run("get", "k") == (0, "1\n")


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("nosuch://x", "unistore: url: unknown scheme in 'nosuch://x'"),
        ("lmdb:///tmp/a%00b", "unistore: path '/tmp/a\\x00b' is not usable: it holds a NUL byte"),
        ("lmdb:///tmp/x?map_size=" + "9" * 5000, "unistore: url: option map_size is out of range"),
        ("lmdb:///tmp/x?map_size=" + "9" * 30, "unistore: map_size must be an int"),
        ("redis://user:secret@localhost:1/0", "unistore: Redis is unreachable"),
        ("redis://localhost:99999999/0", "unistore: url: bad port"),
        ("memory://", "unistore: memory://: a memory store lives in one process"),
    ],
)
def test_bad_stores_are_one_line_errors(store: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--store", store, "get", "k") == (1, "")
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert "secret" not in err


def test_a_huge_map_size_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--store", f"lmdb://{tmp_path}/s?map_size={2**62}", "put", "k", "1") == (1, "")
    assert capsys.readouterr().err.startswith("unistore: LMDB failed")


# -- search -------------------------------------------------------------------------------------------


def _fill(store: str) -> None:
    for key, kind, tag in (("a:1", "doc", "red"), ("a:2", "doc", "blue"), ("b:1", "note", "red")):
        assert run("--store", store, "put", key, json.dumps({"n": key}), "--type", kind, "--tag", f"c={tag}")[0] == 0
    assert run("--store", store, "put", "long", json.dumps("x" * 100), "--ttl", "100")[0] == 0


def test_search_in_a_pipe_is_json_lines(store: str) -> None:
    _fill(store)
    _, text = run("--store", store, "search")
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["key"] for line in lines] == ["a:1", "a:2", "b:1", "long"]  # every type
    assert set(lines[0]) == {"key", "content_type", "tags", "id", "created_at", "updated_at", "expires_at", "data"}
    keys = lambda *argv: [json.loads(line)["key"] for line in run("--store", store, "search", *argv)[1].splitlines()]  # noqa: E731
    assert keys("--type", "doc") == ["a:1", "a:2"]
    assert keys("--tag", "c=red") == ["a:1", "b:1"]
    assert keys("--pattern", "a:*", "--tag", "c=red") == ["a:1"]
    assert len(keys("--limit", "2")) == 2


def test_search_on_a_terminal_is_a_table(store: str) -> None:
    _fill(store)
    status, text = run("--store", store, "search", out=Terminal())
    assert status == 0
    assert "key" in text and "a:1" in text and "c=red" in text and text.endswith("4 item(s)\n")
    assert '"xxx' in text and "…" in text  # long data cut short
    _, lines = run("--store", store, "search", "--json", out=Terminal())
    assert len(lines.splitlines()) == 4 and json.loads(lines.splitlines()[0])["key"] == "a:1"


def test_search_with_a_bad_query(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(store)
    assert run("--store", store, "search", "--limit", "-1") == (1, "")
    assert capsys.readouterr().err == "unistore: --limit must be 0 or more, got -1\n"  # (was the API's wording)
    assert run("--store", store, "search", "--limit", "0") == (0, "")


def test_search_in_order_and_by_pages(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(store)
    keys = lambda *argv: [json.loads(line)["key"] for line in run("--store", store, "search", *argv)[1].splitlines()]  # noqa: E731
    assert keys("--order-by=-key") == ["long", "b:1", "a:2", "a:1"]
    assert keys("--order-by", "created_at", "--limit", "2") == ["a:1", "a:2"]  # saved in that order
    assert keys("--order-by=-updated_at", "--type", "doc") == ["a:2", "a:1"]
    capsys.readouterr()
    assert keys("--order-by=-key", "--page-size", "3") == ["long", "b:1", "a:2"]
    err = capsys.readouterr().err
    assert err.startswith("next: ") and err.count("\n") == 1  # the cursor alone, on stderr
    cursor = err.removeprefix("next: ").strip()
    assert keys("--order-by=-key", "--page-size", "3", "--after", cursor) == ["a:1"]
    assert capsys.readouterr().err == ""  # the last page: no next
    # A cursor of another query, a bad order, a page without a size: one line each.
    refusals = [
        (["--order-by=key", "--page-size", "3", "--after", cursor], "unistore: cursor was made for another query"),
        (["--order-by", "size"], "unistore: --order-by must be key, created_at, updated_at, with a leading -"),
        (["--after", cursor], "unistore: --after names a page: give --page-size too"),
        (["--page-size", "0"], "unistore: --page-size must be 1 or more, got 0"),
    ]
    for argv, said in refusals:
        assert run("--store", store, "search", *argv) == (1, ""), argv
        err = capsys.readouterr().err
        assert err.startswith(said) and err.count("\n") == 1, err


def test_count(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(store)
    assert run("--store", store, "count") == (0, "4\n")
    assert run("--store", store, "count", "--tag", "c=red", "--type", "doc") == (0, "1\n")
    assert run("--store", store, "count", "--pattern", "nothing*") == (0, "0\n")
    assert run("--store", f"{store}&namespace=missing", "count")[0] == 1
    assert "has no namespace 'missing'" in capsys.readouterr().err


# -- stats and namespaces -------------------------------------------------------------------------


def test_stats_and_namespaces(store: str) -> None:
    _fill(store)
    assert run("--store", store + "&namespace=other", "put", "x", "1", "--type", "doc")[0] == 0
    status, text = run("--store", store, "stats")
    assert status == 0
    rows = [line.split() for line in text.splitlines()]
    assert rows[0] == ["content", "type", "items", "bytes"]
    assert [row[:2] for row in rows[1:4]] == [["default", "1"], ["doc", "3"], ["note", "1"]]
    assert rows[4][:2] == ["(all)", "5"]
    assert text.endswith("counted 2 namespace(s): 'default', 'other'\n")
    metrics = MetricsManager.get_instance()
    assert metrics.value("storage_items", content_type="doc") == 3
    assert metrics.value("storage_size", content_type="doc") == int(rows[2][2])
    status, text = run("--store", store + "&namespace=other", "stats")
    assert text.splitlines()[1].split() == ["doc", "1", text.splitlines()[1].split()[2]]
    assert metrics.value("storage_items", content_type="doc") == 1  # the gauges say what was counted last
    _, text = run("--store", store, "namespaces")
    assert [line.split()[:2] for line in text.splitlines()] == [
        ["namespace", "items"],
        ["default", "4"],
        ["other", "1"],
    ]


def test_stats_in_the_prometheus_format(store: str) -> None:
    _fill(store)
    status, text = run("--store", store, "stats", "--prometheus")
    assert status == 0
    assert 'storage_items{content_type="doc"} 2.0' in text
    assert "# TYPE storage_size gauge" in text and 'storage_size{content_type="note"}' in text


def test_stats_computed_by_a_fresh_process(store: str) -> None:
    _fill(store)
    done = subprocess.run(
        [*_script(), "--store", store, "stats", "--prometheus"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert 'storage_items{content_type="doc"} 2.0' in done.stdout


# -- check, repair, purge --------------------------------------------------------------------------------


def _engine(store: str, namespace: str = "default") -> LmdbEngine:
    return LmdbEngine(store[len("lmdb://") : store.index("?")], namespace=namespace, durability="none")


def test_check_and_purge_cover_every_namespace(store: str) -> None:
    for namespace in ("a", "b"):
        engine = _engine(store, namespace)
        engine.save("stays", 1, "t", tags={"a": "b"})
        engine.save("goes", 2, "t", expires_at=datetime.now(timezone.utc) + timedelta(milliseconds=30))
        engine.close()
    status, text = run("check", "--store", store)
    assert status == 0
    counts = "2 records, 2 ids, 1 tag entries, 2 type entries, 2 created entries, 2 updated entries, 1 expiry entries"
    assert f"'a': {counts}\n" in text
    assert text.endswith("checked 2 namespace(s): 'a', 'b'\nconsistent\n")
    time.sleep(0.05)
    status, text = run("purge", "--store", store)
    assert (status, text) == (
        0,
        "'a': purged 1 expired item(s)\n'b': purged 1 expired item(s)\n"
        "purged 2 namespace(s): 'a', 'b'\n2 expired item(s) removed\n",
    )
    status, text = run("purge", "--store", store + "&namespace=b")
    assert text.startswith("'b': purged 0 expired item(s)\npurged 1 namespace(s): 'b'\n")


def test_check_finds_damage_and_repair_fixes_it(store: str) -> None:
    engine = _engine(store)
    engine.save("stays", 1, "t", tags={"a": "b"})
    engine.save("other", 2, "t", tags={"a": "b"})
    engine.write(lambda txn, dbs: txn.put(engine.record_key(b"stays"), b"garbage", db=dbs.records))
    engine.close()
    status, text = run("check", "--store", store)
    assert status == 1
    assert "'default': problem: the record stored under key b'stays' does not decode" in text
    assert text.endswith("problem(s); `unistore check --repair` fixes them\n")
    status, text = run("check", "--repair", "--store", store, out=Terminal())  # with a progress bar
    assert status == 0 and "'default': repaired; consistent now\n" in text and text.endswith("consistent\n")
    assert run("--store", store, "get", "other", "--type", "t") == (0, "2\n")
    assert run("check", "--store", store)[0] == 0


def test_a_repair_that_cannot_fix_everything_says_so(store: str) -> None:
    engine = _engine(store)
    engine.save("a", 1, "t")
    engine.save("b", 2, "t")

    def same_id(txn: Any, dbs: Any) -> None:  # two records claiming one item id
        a = txn.get(engine.record_key(b"a"), db=dbs.records)
        b = txn.get(engine.record_key(b"b"), db=dbs.records)
        txn.put(engine.record_key(b"b"), b[:8] + a[8:16] + b[16:], db=dbs.records)

    engine.write(same_id)
    engine.close()
    status, text = run("check", "--repair", "--store", store)
    assert status == 1 and "'default': repaired; still damaged\n" in text and "'default': problem left: " in text


# -- backup --------------------------------------------------------------------------------------------------


def test_backup(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(store)
    status, text = run("--store", store, "backup", str(tmp_path / "copy"), "--compact")
    assert (status, text) == (0, f"copied {store} to {tmp_path / 'copy'} (compacted)\n")
    assert run("--store", f"lmdb://{tmp_path}/copy", "get", "a:1", "--type", "doc") == (0, '{"n": "a:1"}\n')
    assert run("--store", store, "backup", str(tmp_path / "copy")) == (1, "")
    assert "already holds a store" in capsys.readouterr().err
    assert run("--store", store, "backup", str(tmp_path / "plain"))[1].endswith("plain\n")


@pytest.mark.redis
def test_a_redis_store_is_not_backed_up_by_unistore(
    redis_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{redis_port}/0?namespace={uuid.uuid4().hex}"
    assert run("--store", url, "put", "k", "1", "--type", "doc")[0] == 0
    assert run("--store", url, "backup", str(tmp_path / "r")) == (1, "")
    assert capsys.readouterr().err == (
        "unistore: backup: Redis is backed up with its own persistence (an RDB snapshot from BGSAVE, "
        "or the AOF), not by unistore\n"
    )
    assert not (tmp_path / "r").exists()


# -- migrate ------------------------------------------------------------------------------------------------


def test_migrate(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(store)
    target = f"lmdb://{tmp_path}/target?durability=none"
    status, text = run("migrate", store, target, out=Terminal())
    assert status == 0
    named = "&namespace=default"  # the store's one namespace, copied into its namesake
    assert text == (
        f"{store}{named} -> {target}{named}: read 4, written 4, unchanged 0; verified\n"
        "migrated 1 namespace(s): 'default'\n"
    )
    status, text = run("migrate", store, target, "--type", "doc", "--no-verify")
    assert "read 2, written 0, unchanged 2; not verified\n" in text
    status, text = run("migrate", store, target, "--tag", "c=red", "--pattern", "b*")
    assert "read 1, written 0, unchanged 1; verified\n" in text
    assert run("--store", target, "put", "a:3", "1", "--type", "doc")[0] == 0  # the target holds one more
    status, text = run("migrate", store, target, "--type", "doc")
    assert status == 1 and "verification FAILED" in text and "\nproblem: " in text
    assert run("migrate", f"lmdb://{tmp_path}/nothing", target) == (1, "")
    assert "no unistore store at" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


# -- demo, version, usage, pipes ---------------------------------------------------------------------------


def test_demo_walks_through_every_operation() -> None:
    status, text = run("demo")
    assert status == 0
    scratch = text.split()[3]
    assert scratch.startswith("lmdb:///") and scratch.endswith("?namespace=demo")
    assert not Path(scratch[len("lmdb://") : -len("?namespace=demo")]).exists()  # the scratch store is removed
    assert text.count(" µs  save") == 3
    assert "-> ['fruit:apple', 'fruit:cherry']" in text  # the tag search
    assert "-> ['fruit:apple', 'fruit:banana']" in text  # the glob search
    assert text.count("-> True") == 3
    assert "left after delete: []" in text


def test_demo_refuses_a_store_that_holds_data(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run("demo", "--store", store)  # a new store: fine
    assert status == 0 and text.startswith(f"unistore demo on {store} (native core: {'yes' if NATIVE else 'no'})\n")
    assert run("--store", store, "namespaces") == (1, "")  # the namespace it made is gone again
    assert "holds no namespace" in capsys.readouterr().err
    assert run("--store", store, "put", "mine", "1")[0] == 0
    assert run("demo", "--store", store) == (1, "")
    assert (
        capsys.readouterr().err == f"unistore: demo: {store} already holds data; add --force to write into it anyway\n"
    )
    assert run("demo", "--store", store, "--force")[0] == 0
    assert run("--store", store, "get", "mine") == (0, "1\n")  # a namespace that was there stays
    assert run("demo", "--store", "memory://")[0] == 0


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"unistore {version()}\n"
    import unistore

    assert version() == unistore.__version__


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "usage: unistore" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(store)
    read, write = os.pipe()
    os.close(read)
    with open(write, "w", buffering=1) as closed:  # line-buffered: each line meets the closed pipe
        assert main(["--store", store, "search"], closed) == EXIT_PIPE_CLOSED
    assert capsys.readouterr().err == ""


@pytest.mark.watchdog(120)
@pytest.mark.parametrize("command", [["demo"], ["search"]])
def test_the_console_script_into_a_closed_pipe(store: str, command: list[str]) -> None:
    _fill(store)
    read, write = os.pipe()
    os.close(read)  # as `| head` does once it has read enough
    done = subprocess.run(
        [*_script(), *command] if command == ["demo"] else [*_script(), "--store", store, *command],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )
    os.close(write)
    assert (done.returncode, done.stderr) == (EXIT_PIPE_CLOSED, "")


def test_the_installed_console_script_runs() -> None:
    done = subprocess.run(
        [*_script(), "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "left after delete: []" in done.stdout


def test_bench_prints_unistore_against_the_raw_engine(capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run("bench", "--store", "memory://", out=Terminal())  # with a progress bar on stderr
    assert status == 0
    lines = text.splitlines()
    assert lines[0].startswith("unistore bench on memory://")
    assert lines[1].split() == ["operation", "unistore", "µs", "raw", "µs", "ratio"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert {"save", "load"} <= set(rows)
    assert all(float(value) > 0 for row in rows.values() for value in row[-3:])
    assert "measuring" in capsys.readouterr().err
    assert run("bench", "--store", "nosuch://")[0] == 1
    assert "unistore: bench: 'nosuch://': the bench runs on lmdb://" in capsys.readouterr().err


def test_python_m_unistore_is_the_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["unistore", "--version"])
    # As `python -m` finds it: not imported yet (a test before this one may have imported it).
    monkeypatch.delitem(sys.modules, "unistore.__main__", raising=False)
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("unistore", run_name="__main__")
    assert exited.value.code == 0 and capsys.readouterr().out == f"unistore {version()}\n"
    command = [sys.executable, "-m", "unistore", "--version"]
    ran = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, f"unistore {version()}\n")


def test_a_store_that_dies_with_the_command_is_refused_for_what_must_last(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # put and migrate into memory:// exited 0, and migrate said "verified", of data gone
    # with the process.
    assert run("--store", "memory://", "put", "k", "1") == (1, "")
    assert capsys.readouterr().err == (
        "unistore: put: memory:// keeps nothing once this process ends; use a lasting store "
        "(lmdb://, redis://, redis+cluster://)\n"
    )
    _fill(store)
    assert run("migrate", store, "memory://?namespace=x") == (1, "")
    assert capsys.readouterr().err.startswith("unistore: migrate: memory://?namespace=x keeps nothing")
    assert run("demo", "--store", "memory://")[0] == 0  # the demo shows and leaves nothing, by design


def test_a_mistyped_path_is_not_made(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # put (and migrate, backup) into lmdb://./typo/dir/store made every missing directory
    # without a word; a new store or copy is made only in a directory that exists.
    typo = tmp_path / "typo"
    assert run("--store", f"lmdb://{typo}/dir/store", "put", "k", "1") == (1, "")
    assert capsys.readouterr().err == (
        f"unistore: put: no directory '{typo}/dir' to make the store lmdb://{typo}/dir/store in; "
        "create it first if that is the place you meant\n"
    )
    _fill(store)
    assert run("migrate", store, f"lmdb://{typo}/target") == (1, "")
    assert capsys.readouterr().err.startswith(f"unistore: migrate: no directory '{typo}' to make the store")
    assert run("--store", store, "backup", str(typo / "copy")) == (1, "")
    assert capsys.readouterr().err == (
        f"unistore: backup: no directory '{typo}' to make the copy '{typo / 'copy'}' in; create it first\n"
    )
    assert not typo.exists()
    assert run("--store", f"lmdb://{tmp_path}/new", "put", "k", "1")[0] == 0  # its parent exists: made
    assert run("--store", store, "backup", str(tmp_path / "copy"))[0] == 0
    capsys.readouterr()
    # A Redis URL names no directory: the command goes on to the server (none listens here).
    assert run("--store", "redis://127.0.0.1:1/0", "put", "k", "1") == (1, "")
    assert capsys.readouterr().err.startswith("unistore: Redis is unreachable")


def test_migrate_copies_every_namespace_of_the_source_into_its_namesake(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It copied only the default namespace ("read 4" of a store holding 5 items in two) and
    # said "verified".
    _fill(store)
    assert run("--store", f"{store}&namespace=other", "put", "o:1", "1")[0] == 0
    target = f"lmdb://{tmp_path}/target?durability=none"
    status, text = run("migrate", store, target)
    assert status == 0, text
    assert "read 4, written 4, unchanged 0; verified\n" in text and "read 1, written 1, unchanged 0; verified\n" in text
    assert text.endswith("migrated 2 namespace(s): 'default', 'other'\n")
    assert run("--store", f"{target}&namespace=other", "get", "o:1") == (0, "1\n")
    assert run("--store", target, "get", "a:1", "--type", "doc") == (0, '{"n": "a:1"}\n')
    # Naming a namespace in the target with several in the source is refused, nothing copied.
    assert run("migrate", store, f"lmdb://{tmp_path}/one?namespace=x") == (1, "")
    assert "holds 2 namespaces and the target names one ('x')" in capsys.readouterr().err
    assert not (tmp_path / "one").exists()
    # Naming one in the source copies that one, into the target as given.
    status, text = run("migrate", f"{store}&namespace=other", f"lmdb://{tmp_path}/one")
    assert status == 0 and text.endswith("migrated 1 namespace(s): 'other'\n")
    assert run("--store", f"lmdb://{tmp_path}/one", "get", "o:1") == (0, "1\n")


def test_a_refused_put_makes_no_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A tag given twice kept the last value without a word; a refused tag or key made the
    # store's directory anyway.
    store = f"lmdb://{tmp_path}/new?durability=none"
    assert run("--store", store, "put", "k", "1", "--tag", "a=b", "--tag", "a=c") == (1, "")
    assert (
        capsys.readouterr().err == "unistore: tag 'a' is given twice ('a=b' and 'a=c'): an item has one value per tag\n"
    )
    # A value with a line break is shown escaped: the error stays one line.
    assert run("--store", store, "put", "k", "1", "--tag", "0=", "--tag", "0=\n") == (1, "")
    assert (
        capsys.readouterr().err
        == "unistore: tag '0' is given twice ('0=' and '0=\\n'): an item has one value per tag\n"
    )
    assert run("--store", store, "put", "k", "1", "--type", "") == (1, "")
    assert "content_type must not be empty" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_every_verb_s_help_has_a_description_and_store_lists_the_url_forms(
    capsys: pytest.CaptureFixture[str],
) -> None:
    verbs = ["put", "get", "rm", "search", "stats", "namespaces", "rm-namespace", "check", "purge", "backup", "migrate"]
    for verb in [*verbs, "bench", "demo"]:
        with pytest.raises(SystemExit):
            run(verb, "--help")
        text = capsys.readouterr().out
        description = text.split("\n\n")[1]
        assert description and not description.startswith(("positional", "options")), (verb, text)
        if verb in verbs:
            assert "redis+cluster://" in text and "lmdb:///abs/path" in " ".join(text.split()), (verb, text)


# -- rm-namespace -------------------------------------------------------------------------------------------


def test_rm_namespace_asks_for_yes_then_removes_one_namespace(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(store)
    assert run("--store", f"{store}&namespace=other", "put", "o:1", "1")[0] == 0
    assert run("--store", store, "rm-namespace", "other") == (1, "")
    assert capsys.readouterr().err == (
        f"unistore: rm-namespace: add --yes to remove the namespace 'other' and its 1 live item(s) from {store}\n"
    )
    assert run("--store", f"{store}&namespace=other", "get", "o:1") == (0, "1\n")  # nothing changed
    assert run("--store", store, "rm-namespace", "other", "--yes") == (
        0,
        f"removed the namespace 'other' (1 record(s)) from {store}\n",
    )
    status, text = run("--store", store, "namespaces")
    assert status == 0 and "other" not in text and "default" in text
    assert run("--store", store, "check")[0] == 0
    assert run("--store", store, "rm-namespace", "other", "--yes") == (1, "")
    assert capsys.readouterr().err == f"unistore: rm-namespace: {store} has no namespace 'other'\n"


@pytest.mark.redis
def test_rm_namespace_removes_every_shard_of_a_redis_namespace(
    redis_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    server = f"redis://127.0.0.1:{redis_port}/0"
    name = fresh_namespace()
    for n in range(20):
        assert run("--store", f"{server}?namespace={name}&shards=3", "put", f"k{n}", str(n))[0] == 0
    assert run("--store", server, "rm-namespace", name, "--yes") == (
        0,
        f"removed the namespace {name!r} (20 record(s)) from {server}\n",
    )
    assert name not in run("--store", server, "namespaces")[1]
    with redis.Redis(port=redis_port) as admin:
        assert list(admin.scan_iter(match=f"us{{{name}*")) == []  # not a key of it is left
