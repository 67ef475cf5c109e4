"""Draw speed-up over NCCL against message size, one line per variant, one panel per link mode, from the JSON that
benchmarks/allreduce.py wrote (the GPU machine need not have matplotlib).

    python -m benchmarks.plot_allreduce benchmarks/results/allreduce_*_w2.json --out benchmarks/results/allreduce_w2.png
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runs = [json.load(open(f)) for f in args.files]
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.8), squeeze=False)
    for ax, run in zip(axes[0], runs):
        rows, env = run["rows"], run["environment"]
        names = [k.removesuffix(" us") for k in rows[0] if k.endswith(" us") and k != "nccl us"]
        if env["link"] == "p2p-disabled":  # symmetric memory uses NVLink whatever NCCL is told: not comparable
            names.remove("symm_mem two-shot")
        for hidden, style in ((4096, "-"), (8192, ":")):
            for i, name in enumerate(names):
                pts = sorted((r["MB"], r["nccl us"] / r[f"{name} us"]) for r in rows
                             if r["hidden"] == hidden and r.get(f"{name} us"))
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", markersize=3, color=f"C{i}",
                            label=name if hidden == 4096 else None)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("message size (MB, bf16); solid hidden 4096, dotted 8192")
        ax.set_ylabel("speed-up over NCCL all-reduce")
        ax.set_title(f"{env['card']} x{run.get('world_size', env['gpus'])}, link {env['link']}, {env['date'][:10]}",
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
