"""Turn a pytest-benchmark JSON file into the tables of docs/benchmarks.md.

    python benches/report.py .benchmarks/run.json

Each group's first anchor (a name with "raw" or "pure" in it) is the
denominator of that group's ratios; figures are per operation where the
benchmark runs a batch (its ``batch`` extra info or the load/save group sizes).
"""

from __future__ import annotations

import json
import sys
from typing import Any

PER_ROUND = {"load": 1000, "save-64-durable": 64}


def ops_per_round(bench: dict[str, Any]) -> int:
    """Operations per round: the benchmark's ``batch`` extra info, else its group's size, else 1."""
    return int(bench.get("extra_info", {}).get("batch") or PER_ROUND.get(bench["group"] or "", 1))


def main(path: str) -> None:
    with open(path) as handle:
        data = json.load(handle)
    groups: dict[str, list[dict[str, Any]]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"] or "", []).append(bench)
    print(
        f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
        f"python {data['machine_info']['python_version']}, {data['datetime']}\n"
    )
    for group, benches in groups.items():
        anchor = next((b for b in benches if "raw" in b["name"] or "pure" in b["name"]), benches[0])
        anchor_ops = ops_per_round(anchor)
        print(f"### {group}\n")
        print(f"| benchmark | median | min | ratio to {anchor['name']} (median / min) | extra |")
        print("|---|---:|---:|---:|---|")
        for b in benches:
            s = b["stats"]
            ops = ops_per_round(b)
            unit, scale = ("µs", 1e6) if s["median"] / ops < 1e-3 else ("ms", 1e3)
            ratio_med = (s["median"] / ops) / (anchor["stats"]["median"] / anchor_ops)
            ratio_min = (s["min"] / ops) / (anchor["stats"]["min"] / anchor_ops)
            extra = ", ".join(f"{k}={v}" for k, v in b.get("extra_info", {}).items() if k != "batch")
            print(
                f"| {b['name']} | {s['median'] / ops * scale:.2f} {unit} | {s['min'] / ops * scale:.2f} {unit} "
                f"| {ratio_med:.2f} / {ratio_min:.2f} | {extra} |"
            )
        print()


if __name__ == "__main__":
    main(sys.argv[1])
