"""torch's analysis of what a user-defined Triton kernel writes must find only each kernel's outputs and token.
Whatever it takes for written, the compiled graph copies before the launch (a whole activation per all-reduce), and
it takes every argument for written where it meets an op it cannot read, such as inline assembly (the fused barriers
once used it). The analysis runs on the kernels' TTIR: in a process of its own without Triton's interpreter, which
builds every kernel at every bit width (a kernel Triton's front end rejects fails here, not first on a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_kernel_is_seen_to_write_only_its_outputs_and_token():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-m", "tests.kernels.mutation_probe"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "assuming every input is mutated" not in run.stderr
    written = json.loads(run.stdout.strip().splitlines()[-1])
    for bits in range(2, 9):
        for rotate in (False, True):
            assert written[f"quantize rotate={rotate} bits={bits}"] == ["payload"]
            assert written[f"quantize_symm rotate={rotate} bits={bits}"] == ["token"]
            assert written[f"dequantize rotate={rotate} bits={bits}"] == ["out"]
            for barrier in (False, True):
                assert written[f"dequantize_peers rotate={rotate} barrier={barrier} bits={bits}"] == ["out", "token"]
            assert written[f"dequant_sum_peers rotate={rotate} bits={bits}"] == ["out", "token"]
        assert written[f"dequant_sum_requant bits={bits}"] == ["out"]
        assert written[f"dequant_sum_requant_peers bits={bits}"] == ["token"]
