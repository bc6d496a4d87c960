"""Side-by-side LiteRT latency tables of .tflite files (measured by `tfsparse.latency`).

    python benchmarks/litert_latency.py a.tflite b.tflite [--invokes 300 --rounds 5]

Prints one row per file, one column per (runtime, threads) configuration,
with the ratio to the first file. Read the ratios, measured in one run, not
the absolute values across runs (see `tfsparse.latency`).
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfsparse.latency import compare  # noqa: E402


def format_table(results, baseline=None):
    """A markdown table: one row per file, one column per configuration,
    "median ms (IQR)", "x baseline" when `baseline` names a file, "fails"
    for configurations that do not run and "wrong" for wrong outputs."""
    keys = list(next(iter(results.values())))
    rows = []
    for name, by_config in results.items():
        cells = []
        for key in keys:
            result = by_config[key]
            if not result["ok"]:
                cells.append("fails")
                continue
            cell = f"{result['median_ms']:.4f} ({result['iqr_ms']:.4f})"
            base = results.get(baseline, {}).get(key) if baseline else None
            if base and base["ok"]:
                cell += f", x{result['median_ms'] / base['median_ms']:.2f}"
            if result.get("agrees") is False:
                cell += " **wrong**"
            cells.append(cell)
        rows.append([name, *cells])
    lines = ["| file | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--invokes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    results = compare({path.name: path for path in args.files}, rounds=args.rounds, invokes=args.invokes,
                      warmup=args.warmup)
    print(format_table(results, baseline=args.files[0].name))
    for name, by_config in results.items():
        for key, result in by_config.items():
            if not result["ok"]:
                print(f"{name} {key}: {result['error']}")


if __name__ == "__main__":
    main()
