"""Fit the cost model's lines (latency + size / bandwidth per path) to all-reduce benchmark results and write them
into the package's cost table, keyed by card, link mode and world size.

    python -m benchmarks.fit_cost_model benchmarks/results/allreduce_*.json
    python -m benchmarks.fit_cost_model --predict benchmarks/results/kernel_bandwidth_bit_splits_*.json

--predict adds lines for splits no two-GPU run has timed yet (PREDICTED), each marked "predicted" with what it was
predicted from: the measured INT4/INT8 line of the same hardware and transport, plus the wire bytes the split moves
beyond INT4/INT8's at the transport's measured cost per wire bit, plus the extra time its three kernels took over
INT4/INT8's on one GPU (kernel_bandwidth --splits). A two-GPU run's fit replaces them.
"""

from __future__ import annotations

import argparse
import json

from benchmarks.allreduce import FLASHCOMM_VARIANTS
from flashcomm_compile.config import FlashCommConfig
from flashcomm_compile.cost_model import TABLE_PATH, Line, Prediction
from flashcomm_compile.error_model import wire_bits

AUTO_TARGET = 1.05  # "auto" may be at most 5% slower than NCCL at any benchmarked size

# benchmark column -> the variant as the cost model names it; "auto" and pieces are not variants of their own
VARIANTS = {column: FlashCommConfig(**config).variant for column, config in FLASHCOMM_VARIANTS.items()
            if "mode" not in config and "chunks" not in config}


# (reduce bits, gather bits, rotation) of the lines --predict adds, at group 128
PREDICTED = [(r, g, rotation) for rotation in ("none", "hadamard") for r, g in ((5, 5), (6, 6), (7, 7), (5, 6), (6, 8))]
PREDICTED += [(r, g, "hadamard") for r, g in ((4, 4), (4, 8), (8, 8))]


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
    parser.add_argument("--predict", action="store_true", help="FILES are kernel_bandwidth --splits results")
    args = parser.parse_args()
    table = json.loads(TABLE_PATH.read_text()) if TABLE_PATH.exists() else {}
    if args.predict:
        for path in args.files:
            predict_splits(table, json.load(open(path)))
        TABLE_PATH.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        return
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


def kernel_us(run: dict, reduce_bits: int, gather_bits: int, rotation: str) -> float:
    """The three kernels' time of a split on one GPU at the run's size: the quantize at the reduce bits, the
    dequantize at the gather bits (each from the equal split of that width), the dequant-sum-requantize as the slower
    of the two equal splits (it reads the one width and writes the other)."""
    suffix = " hadamard" if rotation == "hadamard" else ""
    ms = {(row["config"], row["kernel"]): row["ms"] for row in run["rows"]
          if row.get("version", "current") == "current"}

    def time(bits_in: int, bits_out: int, kernel: str) -> float:
        """The split's own row where the run has one, else the equal split of its first width."""
        return ms.get((f"INT{bits_in}/INT{bits_out}{suffix}", kernel)) or ms[(f"INT{bits_in}/INT{bits_in}{suffix}",
                                                                               kernel)]

    reduce = max(time(reduce_bits, gather_bits, "dequant_sum_requant"), time(gather_bits, gather_bits,
                                                                              "dequant_sum_requant"))
    return 1e3 * (time(reduce_bits, reduce_bits, "quantize") + reduce + time(gather_bits, gather_bits, "dequantize"))


def predict_splits(table: dict, kernel_run: dict) -> None:
    """Add a predicted line for each split of PREDICTED to every hardware entry with a measured INT4/INT8 line of
    that transport (see the module docstring)."""
    mb = 2 * kernel_run["numel"] / 1e6  # bf16 values of the kernel run
    base_kernels = kernel_us(kernel_run, 4, 8, "none")
    source = f"predicted from wire bytes and kernel times on one {kernel_run['environment']['card']}, " \
             f"{kernel_run['environment']['date'][:10]}"
    for entry in table.values():
        for transport in ("", " symm_mem"):
            base = entry.get(f"INT4/INT8 g128{transport}")
            if base is None or "predicted" in base:
                continue
            per_bit = _cost_per_wire_bit(entry, transport)
            for reduce_bits, gather_bits, rotation in PREDICTED:
                config = FlashCommConfig(reduce_bits=reduce_bits, gather_bits=gather_bits, rotation=rotation,
                                         transport=transport.strip() or "nccl")
                if config.variant in entry and "predicted" not in entry[config.variant]:
                    continue  # measured
                extra_bits = wire_bits(reduce_bits, gather_bits, 128) - wire_bits(4, 8, 128)
                extra_kernels = max(0.0, kernel_us(kernel_run, reduce_bits, gather_bits, rotation) - base_kernels)
                entry[config.variant] = dict(latency_us=base["latency_us"], predicted=source, us_per_mb=round(
                    base["us_per_mb"] + extra_bits * per_bit + extra_kernels / mb, 4))


def _cost_per_wire_bit(entry: dict, transport: str) -> float:
    """us per MB of input per wire bit per value, from the transport's measured INT4/INT4 and INT4/INT8 lines (4 wire
    bits apart), else the NCCL transport's INT4/INT4 and INT8/INT8 (8 apart)."""
    measured = {name: line for name, line in entry.items() if isinstance(line, dict) and "predicted" not in line}
    if f"INT4/INT4 g128{transport}" in measured:
        return (measured[f"INT4/INT8 g128{transport}"]["us_per_mb"] - measured[f"INT4/INT4 g128{transport}"][
            "us_per_mb"]) / 4
    return (measured["INT8/INT8 g128"]["us_per_mb"] - measured["INT4/INT4 g128"]["us_per_mb"]) / 8


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
