"""Turn a pytest-benchmark JSON file into the tables of docs/benchmarks.md.

    python benches/report.py .benchmarks/run.json

Each group's first anchor (a name with "raw" or "pure" in it) is the
denominator of that group's ratios; figures are per operation where the
benchmark runs a batch (its ``batch`` extra info or the load/save group sizes).
"""

from __future__ import annotations

import json
import sys

PER_ROUND = {"load": 1000, "save-64-durable": 64}


def main(path: str) -> None:
    with open(path) as handle:
        data = json.load(handle)
    groups: dict[str, list[dict]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"] or "", []).append(bench)
    print(
        f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
        f"python {data['machine_info']['python_version']}, {data['datetime']}\n"
    )
    for group, benches in groups.items():
        ops = PER_ROUND.get(group, 1)
        anchor = next((b for b in benches if "raw" in b["name"] or "pure" in b["name"]), benches[0])
        print(f"### {group}\n")
        print(f"| benchmark | median | min | ratio to {anchor['name']} (median / min) | extra |")
        print("|---|---:|---:|---:|---|")
        for b in benches:
            s = b["stats"]
            unit, scale = ("µs", 1e6) if s["median"] / ops < 1e-3 else ("ms", 1e3)
            ratio_med = s["median"] / anchor["stats"]["median"]
            ratio_min = s["min"] / anchor["stats"]["min"]
            extra = ", ".join(f"{k}={v}" for k, v in b.get("extra_info", {}).items())
            print(
                f"| {b['name']} | {s['median'] / ops * scale:.2f} {unit} | {s['min'] / ops * scale:.2f} {unit} "
                f"| {ratio_med:.2f} / {ratio_min:.2f} | {extra} |"
            )
        print()


if __name__ == "__main__":
    main(sys.argv[1])
