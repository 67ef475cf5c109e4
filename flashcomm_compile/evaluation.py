"""What the compression does to a user's own model: its outputs with every eligible all-reduce rewritten, per
candidate config, against the exact all-reduces, on real ranks (gloo on the CPU, NCCL where each rank has a GPU).

The exact run records each eligible all-reduce's input on every rank (a custom op the recording pass puts in front
of it); a site's own error is then the simulated pipeline's (`pipeline.simulate`, the bytes the kernels send) on
those inputs against their float64 sum, not what earlier sites' errors made of its input. Each candidate compiles
the model anew with flashcomm in mode "always".

JSON schema (version 1), see `Evaluation.to_json`:
    {"version": 1, "target": str, "world_size": int, "backend": "gloo" | "nccl", "max_error": float,
     "outputs": [[int]], "sites": [{"node": str, "module": str, "shape": [int]}],
     "configs": [{"config": str, "options": {FlashCommConfig fields}, "wire_bits_per_value": float,
                  "relative_error": float, "cosine": float, "max_abs_error": float, "top1_agreement": float | null,
                  "worst_site": {"node": str, "module": str, "error": float}}],
     "recommended": str | null}
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree

from .config import FlashCommConfig
from .error_model import wire_bits
from .factories import first_line, load_factory, model_and_inputs
from .kernels import reference
from .launch import default_backend, rank_device, run_ranks
from .pipeline import simulate

# the frontier of wire bits against error (README, "Which bits"), each plain and rotated
FRONTIER = ("INT8/INT8", "INT6/INT6", "INT5/INT5", "INT4/INT8")
DEFAULT_MAX_ERROR = 0.01  # relative RMS error of the outputs


class EvaluationError(Exception):
    """Why the evaluation cannot give an answer, in one line."""


def parse_split(name: str) -> dict:
    """ "INT6/INT6" -> reduce_bits=6, gather_bits=6; "INT2+spike/INT4" keeps extremes too."""
    match = re.fullmatch(r"INT(\d)(\+spike)?/INT(\d)", name.strip())
    if match is None:
        raise ValueError(f"{name!r} is not a split like INT6/INT6 or INT2+spike/INT4")
    return dict(reduce_bits=int(match[1]), gather_bits=int(match[3]), spike_reserve=bool(match[2]))


def candidates(splits=FRONTIER, rotations=("none", "hadamard"), group_size: int = 128) -> list[FlashCommConfig]:
    """Each split (`parse_split`'s names) with each rotation, in mode "always"; ValueError names a bad one."""
    return [FlashCommConfig(**parse_split(name), group_size=group_size, rotation=rotation, mode="always")
            for name in splits for rotation in rotations]


@dataclass
class Row:
    config: str
    options: dict
    wire_bits_per_value: float
    relative_error: float
    cosine: float
    max_abs_error: float
    top1_agreement: float | None
    worst_site: dict


@dataclass
class Evaluation:
    target: str
    world_size: int
    backend: str
    max_error: float
    outputs: list[list[int]]
    sites: list[dict]
    configs: list[Row] = field(default_factory=list)

    @property
    def recommended(self) -> Row | None:
        """The fewest wire bits within the budget (of equals, the smaller error)."""
        fitting = [r for r in self.configs if r.relative_error <= self.max_error]
        return min(fitting, key=lambda r: (r.wire_bits_per_value, r.relative_error), default=None)

    def to_json(self) -> str:
        recommended = self.recommended
        return json.dumps(dict(version=1, **dataclasses.asdict(self),
                               recommended=recommended.config if recommended else None), indent=1)

    def to_text(self) -> str:
        lines = [f"flashcomm accuracy: {self.target} on {self.world_size} ranks ({self.backend}); "
                 f"{len(self.sites)} all-reduce(s) rewritten per config; outputs {self.outputs}",
                 f"{'config':<28}{'wire bits':>10}{'rel. error':>12}{'cosine':>11}{'max abs':>11}{'top-1':>8}  "
                 "worst site (its own error)"]
        for r in self.configs:
            top1 = "-" if r.top1_agreement is None else f"{r.top1_agreement:.1%}"
            site = r.worst_site
            lines.append(f"{r.config:<28}{r.wire_bits_per_value:>10.1f}{r.relative_error:>12.4g}{r.cosine:>11.6f}"
                         f"{r.max_abs_error:>11.3g}{top1:>8}  {site['module'] or site['node']} ({site['error']:.3g})")
        recommended = self.recommended
        lines.append(f"recommended (fewest wire bits within --max-error {self.max_error:g}): "
                     f"{recommended.config if recommended else 'none'}")
        return "\n".join(lines)


def evaluate(factory: str | Callable, world_size: int = 2, configs: list[FlashCommConfig] | None = None,
             max_error: float = DEFAULT_MAX_ERROR, dynamic: bool | None = None, vocab_size: int | None = None,
             progress: bool = True) -> Evaluation:
    """Run FACTORY() -> (model, example_inputs) on `world_size` ranks (as `inspect`'s factory, but on real ranks:
    build the TP model from dist.get_rank(), dist.get_world_size() and dist.group.WORLD) and measure each config.

    `factory`: "module:function", or a module-level function. `vocab_size`: the last axis of an output of this
    length is a vocabulary (top-1 agreement); None: the model's `vocab_size` or `config.vocab_size`. Raises
    EvaluationError for a factory that fails on a rank, a model without an all-reduce the pass can rewrite, exact
    outputs that differ across ranks, and where no config meets `max_error` (`.evaluation` holds the results)."""
    target = factory if isinstance(factory, str) else f"{factory.__module__}:{factory.__qualname__}"
    configs = candidates() if configs is None else configs
    if not isinstance(max_error, (int, float)) or isinstance(max_error, bool) or not max_error > 0:
        raise EvaluationError(f"max_error must be a positive number, got {max_error!r}")
    backend = default_backend(world_size)
    answer = run_ranks(world_size, _on_rank, target, [dataclasses.asdict(c) for c in configs], dynamic, vocab_size,
                       progress, backend=backend)[0]
    if "error" in answer:
        raise EvaluationError(answer["error"])
    evaluation = Evaluation(target, world_size, backend, float(max_error), answer["outputs"], answer["sites"],
                            [Row(**row) for row in answer["rows"]])
    if evaluation.recommended is None:
        error = EvaluationError(f"no config meets --max-error {max_error:g}: the least erring, "
                                f"{min(evaluation.configs, key=lambda r: r.relative_error).config}, errs "
                                f"{min(r.relative_error for r in evaluation.configs):.4g}")
        error.evaluation = evaluation
        raise error
    return evaluation


# --- on each rank -------------------------------------------------------------------------------------------------

_recorded: dict[int, torch.Tensor] = {}  # this process's inputs of the eligible all-reduces, by site


@torch.library.custom_op("flashcomm::record_site", mutates_args=())
def record_site(x: torch.Tensor, site: int) -> torch.Tensor:
    """x, noted as site `site`'s input (the exact run of an evaluation)."""
    _recorded[site] = x.detach().cpu().clone()
    return x.clone()


@record_site.register_fake
def _(x, site):
    return torch.empty_like(x)


class _RecordingPass:
    """Puts `record_site` in front of every all-reduce the rewrite could take (`guards.eligibility`)."""

    def __init__(self):
        self.sites: list[dict] = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        from .inspection import module_path
        from .passes.guards import eligibility
        from .passes.rules import ALL_REDUCE
        from .passes.site import Site

        for node in [n for n in graph.nodes if n.target is ALL_REDUCE]:
            value = node.args[0].meta["val"]
            if eligibility(Site.of(node, "all-reduce")) is not None:
                continue
            with graph.inserting_before(node):
                recorded = graph.call_function(torch.ops.flashcomm.record_site.default, (node.args[0], len(self.sites)))
            recorded.meta["val"] = value
            node.replace_input_with(node.args[0], recorded)
            self.sites.append(dict(node=node.name, module=module_path(node), shape=[int(s) for s in value.shape]))

    def uuid(self) -> None:  # never served from a cache: the records are made while compiling
        return None


def _on_rank(rank: int, world: int, target: str, configs: list[dict], dynamic, vocab_size, progress) -> dict:
    """Every rank returns the same {"error": ...} where the evaluation cannot go on; rank 0 the results."""
    try:
        model, inputs = model_and_inputs(load_factory(target)(), target)
        failure = None
    except Exception as e:  # noqa: BLE001 - reported with the rank, on every rank
        failure = f"factory {target} failed on rank {rank}: {type(e).__name__}: {first_line(e)}"
    failures = [None] * world
    dist.all_gather_object(failures, failure)
    if any(failures):
        return dict(error=next(f for f in failures if f))
    inputs = pytree.tree_map_only(torch.Tensor, lambda t: t.to(rank_device(rank)), inputs)
    recorder = _RecordingPass()
    exact = _outputs(_run(model, inputs, dynamic, recorder, dict(mode="never")))
    everyone = [None] * world  # (exact outputs, recorded site inputs) of every rank
    dist.all_gather_object(everyone, (exact, [_recorded[i] for i in range(len(recorder.sites))]))
    problem = _exact_problem(everyone, recorder.sites)
    if problem:
        return dict(error=problem)
    site_inputs = [[inputs_of_rank[i] for _, inputs_of_rank in everyone] for i in range(len(recorder.sites))]
    vocab_size = vocab_size or _vocab_size(model)
    rows = []
    for options in configs:
        out = _outputs(_run(model, inputs, dynamic, None, options))
        if rank == 0:
            rows.append(_row(FlashCommConfig(**options), exact, out, site_inputs, recorder.sites, vocab_size))
            if progress:
                print(f"flashcomm accuracy: {rows[-1]['config']}: relative error {rows[-1]['relative_error']:.4g}",
                      file=sys.stderr, flush=True)
    return dict(outputs=[list(t.shape) for t in exact], sites=recorder.sites, rows=rows)


def _run(model, inputs, dynamic, recorder: _RecordingPass | None, options: dict):
    """One fresh compile with flashcomm and these options, and one call; `recorder` runs first on its graphs."""
    from torch._inductor import config as inductor_config

    from .dynamo_backend import FlashCommBackend

    torch._dynamo.reset()
    with torch.no_grad(), inductor_config.patch(fx_graph_cache=False, post_grad_custom_post_pass=recorder):
        return torch.compile(model, backend=FlashCommBackend(**options), dynamic=dynamic)(*inputs)


def _outputs(out) -> list[torch.Tensor]:
    """The floating-point tensors of a model's output (tensor, tuple, dict, Hugging Face ModelOutput), on the CPU."""
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [t.detach().cpu() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _exact_problem(everyone: list, sites: list) -> str | None:
    exact = everyone[0][0]
    if not exact:
        return "the model's output holds no floating-point tensor to compare"
    if not sites:
        return "the model has no all-reduce the pass can rewrite (a sum of float16, bfloat16 or float32)"
    for rank, (other, _) in enumerate(everyone[1:], start=1):
        if len(other) != len(exact) or not all(torch.equal(a, b) for a, b in zip(exact, other)):
            return (f"the exact run's outputs differ between rank 0 and rank {rank}: the evaluation compares "
                    "replicated outputs (all-reduced, or gathered), not shards")
    return None


def _vocab_size(model) -> int | None:
    return getattr(model, "vocab_size", None) or getattr(getattr(model, "config", None), "vocab_size", None)


def _row(config: FlashCommConfig, exact: list, out: list, site_inputs: list, sites: list, vocab_size) -> dict:
    e = torch.cat([t.double().reshape(-1) for t in exact])
    o = torch.cat([t.double().reshape(-1) for t in out])
    diff = o - e
    top1 = [(a.argmax(-1) == b.argmax(-1)).double().mean().item()
            for a, b in zip(exact, out) if vocab_size and a.dim() and a.shape[-1] == vocab_size]
    errors = [_site_error(inputs, config) for inputs in site_inputs]
    worst = max(range(len(errors)), key=errors.__getitem__)
    return dict(config=config.variant, options=dataclasses.asdict(config),
                wire_bits_per_value=wire_bits(config.reduce_bits, config.gather_bits, config.group_size),
                relative_error=(diff.norm() / e.norm().clamp_min(1e-300)).item(),
                cosine=torch.nn.functional.cosine_similarity(o, e, dim=0).item(), max_abs_error=diff.abs().max().item(),
                top1_agreement=top1[0] if top1 else None,
                worst_site=dict(sites[worst], error=errors[worst]))


def _site_error(per_rank: list[torch.Tensor], config: FlashCommConfig) -> float:
    """The relative L2 error of the pipeline on one site's inputs, against their float64 sum."""
    run, _ = simulate(reference, per_rank, config.reduce_bits, config.gather_bits, config.group_size,
                      config.spike_reserve, config.rotation == "hadamard")
    exact = torch.stack([x.double() for x in per_rank]).sum(0)
    return ((run.outputs[0].double() - exact).norm() / exact.norm().clamp_min(1e-300)).item()

