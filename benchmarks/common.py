"""What every benchmark records beside its numbers: the card, the software and the date; and where results go."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch

from flashcomm_compile.cost_model import link_mode

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    cuda = torch.cuda.is_available()
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda else None
    import triton

    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        card=torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        gpus=torch.cuda.device_count() if cuda else 0, torch=torch.__version__, triton=triton.__version__,
        nccl=nccl, cuda=torch.version.cuda, python=platform.python_version(),
        link=link_mode(),
    )


# Symmetric memory reaches the peers over NVLink whatever NCCL_P2P_DISABLE says: timed in the default link mode only.
SYMM_MEM_LINKS = ("default",)


def compile_every_variant() -> None:
    """Let dynamo compile one function once per benchmarked variant (and size class), and fail rather than fall back.

    Variants of one function share its code object, and past dynamo's recompile limit (8) a further variant runs
    eagerly without a word, and would be timed as if compiled."""
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True


def use_link(link: str) -> None:
    """"default" or "p2p-disabled" (traffic through host memory), for the NCCL processes started after this call."""
    os.environ["NCCL_P2P_DISABLE"] = "1" if link == "p2p-disabled" else "0"


def write_json(name: str, payload: dict) -> Path:
    """Write under benchmarks/results/ and, on the device machine, also under $OUT (which comes back)."""
    paths = [RESULTS / name] + ([Path(os.environ["OUT"]) / name] if os.environ.get("OUT") else [])
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1))
    return paths[0]


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
