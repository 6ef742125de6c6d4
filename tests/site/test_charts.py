"""The benchmark page's charts (scripts/bench-charts): a legend, labels a reader can read,
an axis that ends near the longest bar, one PNG per group of two or more benchmarks."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT

SCRIPT = ROOT / "scripts" / "bench-charts"


def bench(name: str, group: str, median: float, minimum: float, batch: int = 1) -> dict[str, Any]:
    """One benchmark as pytest-benchmark's JSON has it."""
    return {"name": name, "group": group, "stats": {"median": median, "min": minimum}, "extra_info": {"batch": batch}}


RUN = {
    "datetime": "2026-12-07T12:00:00.000000+00:00",
    "machine_info": {"python_version": "3.11.7"},
    "benchmarks": [
        bench("test_load_raw_lmdb_get_unpackb", "load", 0.002, 0.0018, batch=1000),
        bench("test_load_manager_lmdb", "load", 0.0045, 0.004, batch=1000),
        bench("test_durability_sequential[sync]", "durability-sequential", 0.03, 0.028, batch=64),
        bench("test_durability_sequential[none]", "durability-sequential", 0.0015, 0.0012, batch=64),
        bench("test_some_new_thing[fast]", "new", 1.0, 0.9),
        bench("test_some_new_thing[slow]", "new", 2.0, 1.9),
        bench("test_p99_alone", "p99", 1.0, 1.0),
    ],
}


@pytest.fixture(scope="module")
def charts() -> Any:
    """The script as a module (it has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("bench_charts", str(SCRIPT))
    spec = importlib.util.spec_from_loader("bench_charts", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_a_png_per_group_of_two_or_more(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "run.json"), "--out", str(tmp_path / "img")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    drawn = sorted(path.name for path in (tmp_path / "img").iterdir())
    assert drawn == ["bench-durability-sequential.png", "bench-load.png", "bench-new.png"]
    assert all((tmp_path / "img" / name).read_bytes().startswith(b"\x89PNG") for name in drawn)


@pytest.mark.parametrize("group", ["load", "durability-sequential", "new"])
def test_a_chart_says_what_its_colours_and_bars_are(charts: Any, group: str) -> None:
    benches = [b for b in RUN["benchmarks"] if b["group"] == group]
    fig = charts.figure(group, benches, RUN)
    try:
        (ax,) = fig.axes
        (legend_box,) = fig.legends
        legend = [text.get_text() for text in legend_box.get_texts()]
        anchored = any(charts.is_anchor(b["name"]) for b in benches)
        assert legend == [*(["anchor (median)"] if anchored else []), "unistore (median)", "minimum"]
        labels = [tick.get_text() for tick in ax.get_yticklabels()]
        assert not [text for text in labels if "test_" in text or "_" in text or "[" in text]
        longest = max(charts.per_op(b, "median") for b in benches) * (1e6 if group != "new" else 1e3)
        assert longest < ax.get_xlim()[1] <= longest * 1.2
    finally:
        charts.plt.close(fig)


def test_labels(charts: Any) -> None:
    assert charts.label("test_load_manager_lmdb") == "unistore: manager.load"
    assert charts.label("test_durability_sequential[sync]") == 'durability="sync"'
    assert charts.label("test_some_new_thing[fast]") == "some new thing (fast)"
    assert charts.label("test_load_manager_lmdb") != charts.label("test_load_raw_lmdb_get_unpackb")
