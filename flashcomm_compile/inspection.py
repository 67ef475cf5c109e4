"""What flashcomm would do to a model, seen without GPUs or peers: trace it on a fake process group, run the pass,
and report the post-grad graph before and after plus one row per collective (all-reduce, and sequence parallelism's
reduce-scatter and all-gather) with the decision and its reason.

JSON schema (version 1), see `Report.to_json`:
    {"version": 1, "world_size": int, "config": {FlashCommConfig fields}, "hardware": str | null,
     "sites": [{"graph": int, "kind": "all-reduce" | "reduce-scatter" | "all-gather", "node": str, "module": str,
                "source": str, "shape": [str], "dtype": str, "bytes": int | str, "group": str,
                "decision": "rewritten" | "kept", "reason": str,
                "transport": "nccl" | "symm_mem" | null, "transport_reason": str,
                "reduce_payload_bytes": int | str | null, "gather_payload_bytes": int | str | null,
                "compression": float | null, "padding": str | null,
                "predicted_error": float | null, "wire_bits_per_value": float | null,
                "predicted_us": {"nccl": float, "flashcomm": float, "host": float} | null,
                "cost_line": "measured" | str | null}],  (host: of flashcomm's, the host time counted without CUDA
                graphs; predicted_error: `error_model.predicted_error`, the relative RMS error the rewrite is
                predicted to add; cost_line: whether the flashcomm line was measured or what it was predicted from)
     "totals": {"sites": int, "rewritten": int, "kept": int, "bytes": int | null, "wire_bytes_nccl": int | null,
                "wire_bytes_flashcomm": int | null, "predicted_us_nccl": float | null,
                "predicted_us_flashcomm": float | null},
     "graphs": [{"before": str, "after": str}]}
Sizes are numbers, or strings where they are sympy expressions (dynamic shapes); totals count only static sizes.
"""

from __future__ import annotations

import contextlib
import difflib
import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from . import cost_model
from .config import FlashCommConfig
from .dynamo_backend import FlashCommBackend
from .error_model import step_error, step_wire_bits
from .kernels.layout import PayloadLayout
from .passes import guards
from .passes.engine import GraphRecord, SiteReport


@dataclass
class SiteRow:
    graph: int
    kind: str  # "all-reduce", "reduce-scatter" or "all-gather"
    node: str
    module: str
    source: str
    shape: list[str]
    dtype: str
    bytes: int | str
    group: str
    decision: str
    reason: str
    transport: str | None = None  # where rewritten: "nccl" or "symm_mem"
    transport_reason: str = ""
    reduce_payload_bytes: int | str | None = None
    gather_payload_bytes: int | str | None = None
    compression: float | None = None
    padding: str | None = None  # "none" where world size x group size provably divides the size
    predicted_error: float | None = None
    wire_bits_per_value: float | None = None
    predicted_us: dict[str, float] | None = None
    cost_line: str | None = None


def module_path(node: torch.fx.Node) -> str:
    """The module whose forward made the node: "layers.0.attention.wo"."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return path.removeprefix("L['self'].").removeprefix("L['self']")


_TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def _user_source(node: torch.fx.Node) -> str:
    """The innermost frame of the node's stack trace outside torch itself (the user's line: in a forward hook, the
    hook's), and the user frame that called it (the module's forward)."""
    trace = node.meta.get("stack_trace") or ""
    lines = trace.splitlines()
    frames = [(line.strip(), lines[i + 1].strip() if i + 1 < len(lines) else "")
              for i, line in enumerate(lines) if line.strip().startswith("File ")]
    user = [f for f in frames if _TORCH_DIR not in f[0]] or frames or [("", "")]
    described = [f"{frame}: {code}" if code else frame for frame, code in user[-2:]]
    return described[-1] + (f" (called from {described[0]})" if len(described) == 2 else "")


def _size(value) -> int | str:
    """A number where static, the sympy expression's text where symbolic."""
    return value if isinstance(value, int) else str(value)


def _row(graph: int, report: SiteReport, config: FlashCommConfig) -> SiteRow:
    site = report.site
    row = SiteRow(graph=graph, kind=site.kind, node=site.node.name, module=module_path(site.node),
                  source=_user_source(site.node), shape=[str(s) for s in site.shape],
                  dtype=str(site.dtype).removeprefix("torch."), bytes=_size(site.nbytes), group=site.group_name,
                  decision="rewritten" if report.rewritten else "kept", reason=report.reason,
                  transport=report.decision.transport, transport_reason=report.decision.transport_reason)
    if guards.eligibility(site) is None:
        _payloads(row, site, config)
    prediction = report.decision.prediction
    if prediction is not None and site.is_static:
        row.predicted_us = dict(nccl=round(prediction.nccl.predict_us(site.nbytes), 1),
                                flashcomm=round(prediction.flashcomm.predict_us(site.nbytes), 1),
                                host=prediction.host_us)
        row.cost_line = prediction.predicted or "measured"
    return row


def _payloads(row: SiteRow, site, config: FlashCommConfig) -> None:
    """The bytes each step sends, against what the plain collective moves, and the predicted error. An all-reduce
    is both steps; a reduce-scatter the first (reduce_bits), an all-gather the second (gather_bits), each rank's
    chunk padded to whole groups on its own."""
    world = site.world_size
    numel = site.numel * world if site.kind == "all-gather" else site.numel  # the values spread over W chunks
    layout = PayloadLayout.of(numel, world, config)
    steps = [layout.chunk_bytes * world, layout.with_bits(config.gather_bits).chunk_bytes * world]
    taken = {"all-reduce": (0, 1), "reduce-scatter": (0,), "all-gather": (1,)}[site.kind]
    steps = [b if step in taken else None for step, b in enumerate(steps)]
    bits = [(config.reduce_bits, config.gather_bits)[step] for step in taken]
    tail = layout.padded_numel - numel
    row.reduce_payload_bytes, row.gather_payload_bytes = (None if b is None else _size(b) for b in steps)
    row.padding = "none" if site.proves(tail == 0) else f"{tail} zeros, masked in the kernels"
    if site.is_static:
        row.compression = round(cost_model.plain_wire_bytes(site.kind, site.nbytes, world) / sum(b for b in steps if b), 3)
    row.predicted_error = round(math.hypot(*(step_error(b, config.group_size) for b in bits)), 5)
    row.wire_bits_per_value = sum(step_wire_bits(b, config.group_size) for b in bits)


@dataclass
class Report:
    world_size: int
    config: FlashCommConfig
    hardware: str | None
    graphs: list[GraphRecord]
    sites: list[SiteRow] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        static = [r for r in self.sites if isinstance(r.bytes, int)]
        rewritten = [r for r in self.sites if r.decision == "rewritten"]

        def wire(r: SiteRow, flash: bool) -> int:
            if flash and r.decision == "rewritten":
                return sum(int(b) for b in (r.reduce_payload_bytes, r.gather_payload_bytes) if b is not None)
            return cost_model.plain_wire_bytes(r.kind, int(r.bytes), self.world_size)

        predicted = [r for r in self.sites if r.predicted_us]
        return dict(
            sites=len(self.sites), rewritten=len(rewritten), kept=len(self.sites) - len(rewritten),
            bytes=sum(int(r.bytes) for r in static) if static else None,
            wire_bytes_nccl=sum(wire(r, False) for r in static) if static else None,
            wire_bytes_flashcomm=sum(wire(r, True) for r in static) if static else None,
            predicted_us_nccl=round(sum(r.predicted_us["nccl"] for r in predicted), 1) if predicted else None,
            predicted_us_flashcomm=round(sum(
                r.predicted_us["flashcomm" if r.decision == "rewritten" else "nccl"] for r in predicted), 1)
            if predicted else None,
        )

    def diff(self, full: bool = False, color: bool = False) -> str:
        chunks = []
        for i, g in enumerate(self.graphs):
            lines = difflib.unified_diff(g.before.splitlines(), g.after.splitlines(), f"graph {i} before",
                                         f"graph {i} after", n=10**6 if full else 3, lineterm="")
            chunks.extend(_colour(line) if color else line for line in lines)
        return "\n".join(chunks)

    def to_json(self) -> str:
        return json.dumps(dict(version=1, world_size=self.world_size, config=asdict(self.config),
                               hardware=self.hardware, sites=[asdict(r) for r in self.sites],
                               totals=self.totals(),
                               graphs=[dict(before=g.before, after=g.after) for g in self.graphs]), indent=1)

    def cost_model_note(self) -> str:
        if self.hardware is None:
            return "this machine's measurements, if any (else the min_bytes rule)"
        if not cost_model.measured(f"{self.hardware}|w{self.world_size}"):
            return f"{self.hardware} has no line for world size {self.world_size} (min_bytes rule)"
        return self.hardware

    def to_text(self, full: bool = False, color: bool = False) -> str:
        header = (f"flashcomm inspect: world size {self.world_size}, {self.config.describe()}, "
                  f"cost model: {self.cost_model_note()}")
        columns = ["graph", "kind", "node", "module", "shape", "dtype", "bytes", "decision", "reason", "transport",
                   "reduce_payload_bytes", "gather_payload_bytes", "compression", "predicted_error", "predicted_us",
                   "cost_line"]
        table = _table([[_cell(getattr(r, c)) for c in columns] for r in self.sites], columns)
        totals = ", ".join(f"{k} {v}" for k, v in self.totals().items() if v is not None)
        sources = "\n".join(f"  {r.node}: {r.source}" for r in self.sites if r.source)
        transports = "\n".join(f"  {r.node}: {r.transport} ({r.transport_reason})" for r in self.sites if r.transport)
        return "\n\n".join(filter(None, [header, self.diff(full, color), table, "sources:\n" + sources,
                                         transports and "transports:\n" + transports, "totals: " + totals]))

    def to_html(self, full: bool = False) -> str:
        diffs = "".join(
            f"<h2>graph {i}</h2>" + difflib.HtmlDiff(wrapcolumn=90).make_table(
                g.before.splitlines(), g.after.splitlines(), "before the pass", "after the pass",
                context=not full, numlines=3)
            for i, g in enumerate(self.graphs))
        columns = list(asdict(self.sites[0])) if self.sites else []
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in asdict(r).values()) + "</tr>"
                       for r in self.sites)
        totals = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in self.totals().items())
        return f"""<!doctype html><html><head><meta charset="utf-8"><title>flashcomm inspect</title><style>
body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;vertical-align:top}} .diff_add{{background:#cfc}}
.diff_chg{{background:#ffa}} .diff_sub{{background:#fcc}} td.diff_header{{text-align:right}}
</style></head><body><h1>flashcomm inspect</h1>
<p>world size {self.world_size}, {html.escape(self.config.describe())}, cost model:
{html.escape(self.cost_model_note())}</p>
<h2>collective sites</h2><table id="sites"><tr>{"".join(f"<th>{c}</th>" for c in columns)}</tr>{rows}</table>
<h2>totals</h2><ul id="totals">{totals}</ul>{diffs}</body></html>"""


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(value)
    if isinstance(value, dict):
        return " / ".join(f"{k} {v}" for k, v in value.items())
    return "" if value is None else str(value)


def _table(rows: list[list[str]], columns: list[str]) -> str:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _colour(line: str) -> str:
    for prefix, code in (("+++", "1"), ("---", "1"), ("+", "32"), ("-", "31"), ("@@", "36")):
        if line.startswith(prefix):
            return f"\033[{code}m{line}\033[0m"
    return line


@contextlib.contextmanager
def fake_process_group(world_size: int):
    """A process group with no peers (rank 0 of `world_size`), unless one is already initialized."""
    if dist.is_initialized():
        yield
        return
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def inspect(model_or_fn: Callable, *example_inputs: Any, world_size: int = 2, hardware: str | None = None,
            dynamic: bool | None = None, **config: Any) -> Report:
    """Compile `model_or_fn` with the flashcomm pass on a fake process group of `world_size` ranks and report.

    The process group must exist before a TP model is built; `inspect_factory` builds it inside one. `hardware`
    ("NVIDIA H200|default") selects the cost model's measurements to predict with; None: this machine's. Past
    dynamo's recompile limit for the model's code (many inspections of one class in a process) this raises rather
    than report a model that ran uncompiled; `torch._dynamo.reset()` starts afresh.
    """
    from torch._inductor import config as inductor_config

    if hardware is not None and hardware not in cost_model.known_hardware():
        raise ValueError(f"hardware {hardware!r} unknown; known: {cost_model.known_hardware()}")
    flash_config = FlashCommConfig.from_options(config)
    backend = FlashCommBackend(flash_config, keep_code=True)
    with fake_process_group(world_size), cost_model.assume_hardware(hardware), \
            inductor_config.patch(fx_graph_cache=False), torch.no_grad(), \
            torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        torch.compile(model_or_fn, backend=backend, dynamic=dynamic)(*example_inputs)
    report = Report(world_size, flash_config, hardware, backend.records)
    report.sites = [_row(i, s, flash_config) for i, g in enumerate(backend.records) for s in g.sites]
    return report


def inspect_factory(factory: Callable[[], tuple], world_size: int = 2, **kwargs: Any) -> Report:
    """Like `inspect`, for a FACTORY() -> (model, example_inputs) called once the fake process group exists."""
    with fake_process_group(world_size):
        model, example_inputs = factory()
        return inspect(model, *example_inputs, world_size=world_size, **kwargs)
