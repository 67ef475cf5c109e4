"""Accuracy of flashcomm on real and LLM-like weights, against the exact all-reduce, on 2 ranks (gloo on the CPU,
NCCL where 2 GPUs exist).

1. all-MiniLM-L6-v2 (real weights, TP over heads and FFN): cosine similarity of the sentence embeddings of
   benchmarks/data/sentences.txt to the exact ones, and nearest-neighbour retrieval agreement.
2. A Llama-shaped TP model with random weights and injected massive-activation channels (as real LLMs show): KL
   divergence of the next-token distribution and top-1 agreement; "sp-llama" is the same model on DTensor's
   sequence-parallel plan, its reduce-scatters and all-gathers rewritten instead of all-reduces.
3. The prefill of benchmarks/ttft.py's client (Llama-3-8B shapes, 8 layers, random weights, bfloat16, one 512-token
   prompt) compiled as TP clients ship it (fullgraph=True, dynamic=True), with a random 128256-token head: KL and
   top-1 agreement. Its activations have no outlier channels: what rotation does where there are none to remove.

    PYTHONPATH=. python -m benchmarks.accuracy [--quick] [--models minilm,outlier-llama,sp-llama,client-llama]
        [--configs INT6/INT6,INT4/INT8] [--groups 32,128] [--rotations none,hadamard]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from benchmarks.common import environment, print_table, write_json
from flashcomm_compile.examples import llama, minilm
from flashcomm_compile.launch import default_backend, rank_device, run_ranks

SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"
CONFIGS = {  # the frontier of wire bits against error, most bits first
    "INT8/INT8": dict(reduce_bits=8, gather_bits=8),
    "INT6/INT8": dict(reduce_bits=6, gather_bits=8),
    "INT6/INT6": dict(reduce_bits=6, gather_bits=6),
    "INT4/INT8": dict(reduce_bits=4, gather_bits=8),
    "INT5/INT6": dict(reduce_bits=5, gather_bits=6),
    "INT5/INT5": dict(reduce_bits=5, gather_bits=5),
    "INT4/INT4": dict(reduce_bits=4, gather_bits=4),
    "INT3/INT4": dict(reduce_bits=3, gather_bits=4),
    "INT2+spike/INT4": dict(reduce_bits=2, gather_bits=4, spike_reserve=True),
}
GROUP_SIZES = (32, 128, 512)
ROTATIONS = ("none", "hadamard")


def sentences() -> list[str]:
    return [line.strip() for line in SENTENCES.read_text().splitlines() if line.strip()]


def _variants(configs: dict, group_sizes, rotations):
    """(config name, group size, rotation, backend options) of every variant measured."""
    return [(name, group, rotation, dict(config, group_size=group, rotation=rotation))
            for name, config in configs.items() for group in group_sizes for rotation in rotations]


def _compiled(model: nn.Module, options: dict | None, **compile_options):
    """`model` compiled with flashcomm in mode "always" and these options, or (options None) by Inductor alone."""
    import flashcomm_compile

    torch._dynamo.reset()  # a fresh compile per config: dynamo's recompile limit would silently fall back to eager
    backend = "inductor" if options is None else flashcomm_compile.backend(mode="always", **options)
    return torch.compile(model, backend=backend, **compile_options)


def _progress(rank: int, row: dict) -> None:
    if rank == 0:
        print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
              flush=True)


def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2.0)
    return similarity.argmax(1)


def minilm_rank(rank: int, world: int, configs: dict, group_sizes, texts: list[str],
                rotations=ROTATIONS) -> list[dict]:
    device = rank_device(rank)
    model = minilm.shard_with_funcol(minilm.load(), rank, world, dist.group.WORLD).to(device)
    ids, mask = (t.to(device) for t in minilm.tokenize(texts))
    rows = []
    with torch.no_grad():
        exact = model(ids, mask).float()
        for name, group_size, rotation, options in _variants(configs, group_sizes, rotations):
            out = _compiled(model, options)(ids, mask).float()
            cosine = (out * exact).sum(-1) / (out.norm(dim=-1) * exact.norm(dim=-1))
            agree = (nearest_neighbours(out) == nearest_neighbours(exact)).float().mean()
            rows.append(dict(model="MiniLM-L6", config=name, group=group_size, rotation=rotation,
                             mean_cosine=cosine.mean().item(), min_cosine=cosine.min().item(),
                             nn_agreement=agree.item()))
            _progress(rank, rows[-1])
    return rows


class OutlierLlama(nn.Module):
    """Token ids -> logits around the Llama body, with a few residual channels 30x larger than the rest and the
    attention / MLP outputs (the all-reduced tensors) amplifying them 10x, like the massive activations of LLMs."""

    def __init__(self, shape: llama.LlamaShape, vocab: int = 4096, outlier_channels=(7, 100, 301)):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(vocab, shape.dim)
        self.body = llama.build(shape, seed=1)
        self.head = nn.Linear(shape.dim, vocab, bias=False)
        with torch.no_grad():
            channels = list(outlier_channels)
            self.embed.weight[:, channels] *= 30.0
            for layer in self.body.layers:
                layer.attention.wo.weight[channels, :] *= 10.0
                layer.feed_forward.w2.weight[channels, :] *= 10.0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(tokens)))


def _next_token_agreement(exact: torch.Tensor, out: torch.Tensor) -> dict:
    """KL(exact || out) of the next-token distributions (log-probabilities), and how often their top-1 agree."""
    kl = (exact.exp() * (exact - out)).sum(-1).mean()
    return dict(kl=kl.item(), top1_agreement=(exact.argmax(-1) == out.argmax(-1)).float().mean().item())


def llama_rank(rank: int, world: int, configs: dict, group_sizes, rotations=ROTATIONS) -> list[dict]:
    device = rank_device(rank)
    shape = llama.LlamaShape(dim=512, n_heads=8, ffn_dim=1408, n_layers=4)
    model = OutlierLlama(shape)
    llama.shard_with_funcol(model.body, rank, world, dist.group.WORLD)
    model = model.to(device)
    tokens = torch.randint(0, 4096, (4, 128), generator=torch.Generator().manual_seed(2)).to(device)
    rows = []
    with torch.no_grad():
        exact = model(tokens).float().log_softmax(-1)
        for name, group_size, rotation, options in _variants(configs, group_sizes, rotations):
            out = _compiled(model, options)(tokens).float().log_softmax(-1)
            rows.append(dict(model="Llama+outliers", config=name, group=group_size, rotation=rotation,
                             **_next_token_agreement(exact, out)))
            _progress(rank, rows[-1])
    return rows


def sp_llama_rank(rank: int, world: int, configs: dict, group_sizes, rotations=ROTATIONS) -> list[dict]:
    """`llama_rank`'s model and tokens with the body on DTensor's sequence-parallel plan: its reduce-scatters and
    all-gathers rewritten instead of all-reduces, at the same options (embedding and head outside, exact)."""
    from torch.distributed.device_mesh import init_device_mesh

    device = rank_device(rank)
    shape = llama.LlamaShape(dim=512, n_heads=8, ffn_dim=1408, n_layers=4)
    model = OutlierLlama(shape).to(device)
    tokens = torch.randint(0, 4096, (4, 128), generator=torch.Generator().manual_seed(2)).to(device)
    rows = []
    with torch.no_grad():
        exact = model(tokens).float().log_softmax(-1)
        llama.shard_with_dtensor(model.body, init_device_mesh(device.type, (world,)), sequence_parallel=True)
        hidden = model.embed(tokens).chunk(world, dim=1)[rank]
        for name, group_size, rotation, options in _variants(configs, group_sizes, rotations):
            body = _compiled(model.body, options)(hidden)
            slices = [torch.empty_like(body) for _ in range(world)]
            dist.all_gather(slices, body.contiguous())
            out = model.head(torch.cat(slices, dim=1)).float().log_softmax(-1)
            rows.append(dict(model="Llama+outliers, sequence parallel", config=name, group=group_size,
                             rotation=rotation, **_next_token_agreement(exact, out)))
            _progress(rank, rows[-1])
    return rows


class ClientLlama(nn.Module):
    """benchmarks/ttft.py's model (hidden states in) with a random head: the next-token logits of each position."""

    def __init__(self, shape: llama.LlamaShape, vocab: int = 128256):
        super().__init__()
        self.body = llama.build(shape, seed=3, dtype=torch.bfloat16)
        self.head = nn.Linear(shape.dim, vocab, bias=False, dtype=torch.bfloat16)
        with torch.no_grad():
            self.head.weight.normal_(0.0, shape.dim ** -0.5)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(hidden))


def client_llama_rank(rank: int, world: int, configs: dict, group_sizes, rotations=ROTATIONS) -> list[dict]:
    from benchmarks.ttft import MODELS as TTFT_MODELS

    device = rank_device(rank)
    model = ClientLlama(TTFT_MODELS["8b"][1])
    llama.shard_with_funcol(model.body, rank, world, dist.group.WORLD)
    model = model.to(device)
    hidden = torch.randn(1, 512, model.body.shape.dim, generator=torch.Generator().manual_seed(4),
                         dtype=torch.bfloat16).to(device)
    # the floor: Inductor's own compile, exact all-reduce, differs from eager by its bfloat16 rounding alone
    variants = [("exact, Inductor", "-", "-", None), *_variants(configs, group_sizes, rotations)]
    rows = []
    with torch.no_grad():
        exact = model(hidden).float().log_softmax(-1)
        for name, group_size, rotation, options in variants:
            compiled = _compiled(model, options, fullgraph=True, dynamic=True)
            rows.append(dict(model="Llama-3-8B client", config=name, group=group_size, rotation=rotation,
                             **_next_token_agreement(exact, compiled(hidden).float().log_softmax(-1))))
            _progress(rank, rows[-1])
    return rows


MODELS = {  # what --models names: the table's title, the function each rank runs, the metrics
    "minilm": ("MiniLM-L6, {sentences} sentences:", minilm_rank, ["mean_cosine", "min_cosine", "nn_agreement"]),
    "outlier-llama": ("Llama-shaped, 4 layers, outlier channels, 512 tokens:", llama_rank, ["kl", "top1_agreement"]),
    "sp-llama": ("The same, sequence parallel (reduce-scatters and all-gathers rewritten):", sp_llama_rank,
                 ["kl", "top1_agreement"]),
    "client-llama": ("Llama-3-8B shapes, 8 layers, bfloat16, fullgraph=True, dynamic=True, 512 tokens:",
                     client_llama_rank, ["kl", "top1_agreement"]),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2 configs, group 128, 48 sentences")
    parser.add_argument("--groups", default=",".join(map(str, GROUP_SIZES)), help="group sizes, comma-separated")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--rotations", default=",".join(ROTATIONS), help=f"comma-separated, of {list(ROTATIONS)}")
    args = parser.parse_args()
    models, names, rotations = args.models.split(","), args.configs.split(","), tuple(args.rotations.split(","))
    for option, chosen, known in (("models", models, MODELS), ("configs", names, CONFIGS),
                                  ("rotations", rotations, ROTATIONS)):
        if unknown := [m for m in chosen if m not in known]:
            parser.error(f"--{option}: unknown {unknown}, expected some of {list(known)}")
    configs = {k: CONFIGS[k] for k in ("INT8/INT8", "INT4/INT8")} if args.quick else {k: CONFIGS[k] for k in names}
    groups = (128,) if args.quick else tuple(int(g) for g in args.groups.split(","))
    texts = sentences()[:48] if args.quick else sentences()
    backend = default_backend(2)
    # a compile per variant; on 2 CPU cores MiniLM and the outlier Llama take an hour, the client 2.5 minutes a variant
    hours = 3 * 3600
    env = environment()
    results = dict(environment=env, sentences=len(texts))
    print(f"accuracy against the exact all-reduce, 2 ranks on {backend}, {env['card']}, {env['date']}")
    for key in models:
        title, rank_fn, columns = MODELS[key]
        extra = (texts,) if key == "minilm" else ()
        results[key] = run_ranks(2, rank_fn, configs, groups, *extra, rotations, backend=backend, timeout=hours)[0]
        print(title.format(sentences=len(texts)))
        print_table(results[key], ["config", "group", "rotation", *columns])
    date = env["date"][:10]
    write_json(f"accuracy_{'_'.join(models)}_g{'_'.join(map(str, groups))}_{backend}_{env['card'].replace(' ', '_')}"
               f"_{date}.json", results)


if __name__ == "__main__":
    main()
