"""Fit the cost model's lines (latency + size / bandwidth per path) to all-reduce benchmark results and write them
into the package's cost table, keyed by card, link mode and world size.

    python -m benchmarks.fit_cost_model benchmarks/results/allreduce_*.json
"""

from __future__ import annotations

import argparse
import json

from benchmarks.allreduce import FLASHCOMM_VARIANTS
from flashcomm_compile.config import FlashCommConfig
from flashcomm_compile.cost_model import TABLE_PATH, Line, Prediction

AUTO_TARGET = 1.05  # "auto" may be at most 5% slower than NCCL at any benchmarked size

# benchmark column -> the variant as the cost model names it; "auto" and pieces are not variants of their own
VARIANTS = {column: FlashCommConfig(**config).variant for column, config in FLASHCOMM_VARIANTS.items()
            if "mode" not in config and "chunks" not in config}


def fit_line(points: list[tuple[float, float]]) -> dict:
    """Least squares of us against MB in relative terms (each point weighted by 1 / us^2): sizes span four decades,
    and an absolute fit would let the largest sizes set the latency that decides the small ones. The latency is kept
    at least half the smallest time measured."""
    weights = [1 / y**2 for _, y in points]
    total = sum(weights)
    mean_x = sum(w * x for w, (x, _) in zip(weights, points)) / total
    mean_y = sum(w * y for w, (_, y) in zip(weights, points)) / total
    sxx = sum(w * (x - mean_x) ** 2 for w, (x, _) in zip(weights, points))
    slope = sum(w * (x - mean_x) * (y - mean_y) for w, (x, y) in zip(weights, points)) / sxx
    latency = max(mean_y - slope * mean_x, min(y for _, y in points) / 2)
    return dict(latency_us=round(latency, 2), us_per_mb=round(slope, 4))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    table = json.loads(TABLE_PATH.read_text()) if TABLE_PATH.exists() else {}
    for path in args.files:
        run = json.load(open(path))
        env, rows = run["environment"], run["rows"]
        key = f"{env['card']}|{env['link']}|w{run.get('world_size', env['gpus'])}"
        entry = {"nccl": fit_line([(r["MB"], r["nccl us"]) for r in rows]), "measured": env["date"]}
        measured = {column: name for column, name in VARIANTS.items() if rows[0].get(f"{column} us") is not None}
        nccl = Line(**entry["nccl"])
        for column, name in measured.items():
            line = fit_line([(r["MB"], r[f"{column} us"]) for r in rows])
            entry[name] = vars(within_target_in_sample(rows, column, nccl, Line(**line)))
        table[key] = entry
        for column, name in measured.items():
            threshold = Prediction(key, nccl, Line(**entry[name])).threshold_bytes
            print(f"{key} {name}: auto rewrites from {threshold / 1e6:.3g} MB; measured auto / NCCL at worst "
                  f"{auto_worst_ratio(rows, column, threshold):.3f} (in sample)")
        if "auto us" in rows[0]:
            worst = max(rows, key=lambda r: r["auto us"] / r["nccl us"])
            print(f"{key} auto as run (the table of that day): at worst {worst['auto us'] / worst['nccl us']:.3f} "
                  f"of NCCL, at {worst['MB']:.3g} MB")
    TABLE_PATH.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def within_target_in_sample(rows: list[dict], column: str, nccl: Line, line: Line) -> Line:
    """`line`, its latency raised in 1 us steps until "auto" would be at most AUTO_TARGET x NCCL's time at every
    measured size: where a line fits the path poorly somewhere, the threshold moves above that size."""
    while auto_worst_ratio(rows, column, Prediction("", nccl, line).threshold_bytes) > AUTO_TARGET:
        line = Line(round(line.latency_us + 1, 2), line.us_per_mb)
    return line


def auto_worst_ratio(rows: list[dict], column: str, threshold_bytes: float) -> float:
    """Measured time of what "auto" would run over NCCL's, worst over the benchmarked sizes (1.0 where it keeps
    NCCL)."""
    return max(r[f"{column} us"] / r["nccl us"] if r["MB"] * 1e6 >= threshold_bytes else 1.0 for r in rows)


if __name__ == "__main__":
    main()
