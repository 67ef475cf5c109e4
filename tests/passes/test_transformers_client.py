"""Hugging Face transformers' tensor parallelism as a client: `from_pretrained(path, tp_plan="auto")` on 2 gloo ranks
(its row-parallel outputs all-reduced in place, its logits all-gathered), compiled with backend="flashcomm" by name.
The checkpoint is a small random Llama the test writes."""

from __future__ import annotations

import logging

import pytest
import torch

from flashcomm_compile.error_model import predicted_error
from flashcomm_compile.launch import run_ranks

pytest.importorskip("transformers")
pytest.importorskip("accelerate")


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _tp_auto(rank, world, path):
    from transformers import AutoModelForCausalLM

    import flashcomm_compile  # noqa: F401 - registers backend="flashcomm" when run from a source tree

    lines = _Lines()
    logger = logging.getLogger("flashcomm_compile")
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    model = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", dtype=torch.float32).eval()
    ids = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(ids).logits
        compiled = torch.compile(model, backend="flashcomm", options=dict(mode="always", reduce_bits=8, gather_bits=8))
        out = compiled(ids).logits
    return dict(lines=lines.lines, logits=out, error=((out - eager).norm() / eager.norm()).item())


def test_transformers_tp_plan_auto_has_every_all_reduce_rewritten(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=1000, max_position_embeddings=128)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    ranks = run_ranks(2, _tp_auto, str(tmp_path))
    # 2 all-reduces a layer (attention and MLP outputs) and the embedding's; the vocabulary-parallel logits gathered
    assert "flashcomm: rewrote 5 of 5 all-reduces, 1 of 1 all-gathers, 6 over nccl" in ranks[0]["lines"]
    assert torch.equal(ranks[0]["logits"], ranks[1]["logits"])
    # six rewritten sites, each predicted to err 0.0083 RMS (error model), compounding through 2 layers
    assert 0 < ranks[0]["error"] < 6 * predicted_error(8, 8, 128)
