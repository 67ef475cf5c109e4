"""Draw error against bits on the wire per value, one line per family: the error model's prediction on Gaussian
activations (the least erring split at each wire budget), and all-MiniLM-L6-v2's loss of cosine (1 - mean cosine to
the exact all-reduce's embeddings), plain and rotated, from the accuracy benchmark's JSON.

    python -m benchmarks.plot_frontier benchmarks/results/accuracy_minilm_*.json \\
        benchmarks/results/accuracy_gloo_cpu.json --out benchmarks/results/frontier_g128.png
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from flashcomm_compile.error_model import BIT_WIDTHS, predicted_error, wire_bits  # noqa: E402

GROUP = 128


def gaussian_frontier() -> list[tuple[float, float, str]]:
    """(wire bits, predicted error, split) of the least erring split at each wire budget."""
    best: dict[float, tuple[float, str]] = {}
    for r in BIT_WIDTHS:
        for g in BIT_WIDTHS:
            bits, error = wire_bits(r, g, GROUP), predicted_error(r, g, GROUP)
            if bits not in best or error < best[bits][0]:
                best[bits] = (error, f"INT{r}/INT{g}")
    return sorted((bits, error, name) for bits, (error, name) in best.items())


def minilm_points(files: list[str]) -> dict[str, list[tuple[float, float, str]]]:
    """rotation -> (wire bits, 1 - mean cosine, split) of every MiniLM row at group 128 (spikes left out)."""
    points: dict[str, dict[str, tuple[float, float, str]]] = {"none": {}, "hadamard": {}}
    for path in files:
        for row in json.load(open(path)).get("minilm", []):
            if row["group"] != GROUP or "spike" in row["config"]:
                continue
            r, g = (int(part.removeprefix("INT")) for part in row["config"].split("/"))
            points[row["rotation"]][row["config"]] = (wire_bits(r, g, GROUP), 1 - row["mean_cosine"], row["config"])
    return {rotation: sorted(by_split.values()) for rotation, by_split in points.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+", help="accuracy benchmark results with MiniLM rows")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    fig, (gauss, minilm) = plt.subplots(1, 2, figsize=(12, 4.6))
    frontier = gaussian_frontier()
    gauss.semilogy([b for b, _, _ in frontier], [e for _, e, _ in frontier], "o-", label="error model (Gaussian)")
    for bits, error, name in frontier:
        gauss.annotate(name, (bits, error), fontsize=7, xytext=(3, 3), textcoords="offset points")
    gauss.set(xlabel="wire bits per value (both steps, group 128)", ylabel="relative RMS error of one all-reduce",
              title="least erring split per wire budget")
    for rotation, style in (("none", "s--"), ("hadamard", "o-")):
        points = minilm_points(args.files)[rotation]
        minilm.semilogy([b for b, _, _ in points], [e for _, e, _ in points], style, label=f"rotation {rotation}")
        for bits, error, name in points:
            minilm.annotate(name, (bits, error), fontsize=7, xytext=(3, 3), textcoords="offset points")
    minilm.set(xlabel="wire bits per value (both steps, group 128)", ylabel="1 - mean cosine to the exact embeddings",
               title="all-MiniLM-L6-v2, TP = 2 (2 gloo ranks)")
    for ax in (gauss, minilm):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
