"""The stages of one quantized all-reduce, described once per transport, and its two halves alone, the
reduce-scatter and the all-gather of sequence parallelism.

The pass traces these into the post-grad graph (Inductor then launches the Triton kernels itself; on CPUs it calls
the torch reference's custom ops), the eager API calls them, and the benchmarks time them stage by stage. Each
pipeline holds what the compile knows (config, group, world size, workspace), so nothing is rebuilt per call.

NCCL transport: quantize -> all-to-all (the reduce-scatter) -> dequantize-sum-requantize -> all-gather -> dequantize.
Symmetric memory: the all-to-all and the all-gather are folded into the kernels' loads from the peers' buffers, with
a barrier at the end of each of the first two kernels; see `symmetric.py` for the workspace and why two barriers
suffice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .config import FlashCommConfig
from .kernels import reference_ops
from .kernels.layout import PayloadLayout, validate_dtype
from .symmetric import SymmetricLayout, workspace

_c10d = torch.ops._c10d_functional


def kernels_for(device: torch.device):
    """The Triton kernels on CUDA (Inductor launches them itself), the torch reference as custom ops elsewhere (the
    same bytes; `reference_ops` says why not traced in)."""
    if device.type == "cuda":
        from .kernels import triton_kernels

        return triton_kernels
    return reference_ops


def piece_bounds(numel, chunks: int, alignment: int) -> list[tuple]:
    """[start, end) of up to `chunks` pieces of whole `alignment`-element blocks (only the last piece pads); one
    piece for a symbolic size, whose pieces cannot be fixed at trace time."""
    if chunks == 1 or not isinstance(numel, int):
        return [(0, numel)]
    size = -(-numel // chunks)
    size = -(-size // alignment) * alignment
    return [(start, min(start + size, numel)) for start in range(0, numel, size)]


@dataclass(frozen=True)
class NcclPipeline:
    """The two-step all-reduce with NCCL's all-to-all and all-gather between the kernels."""

    config: FlashCommConfig
    group_name: str
    world_size: int

    def layout(self, numel) -> PayloadLayout:
        return PayloadLayout.of(numel, self.world_size, self.config)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        validate_dtype(x.dtype)
        return kernels_for(x.device).quantize(x, self.layout(x.numel()))

    def all_to_all(self, payload: torch.Tensor) -> torch.Tensor:
        """Started, not waited for: the next piece's quantize overlaps it."""
        splits = [1] * self.world_size
        return _c10d.all_to_all_single(payload, splits, splits, self.group_name)

    def reduce(self, received: torch.Tensor, numel) -> torch.Tensor:
        """This rank's chunk from every rank, summed and requantized."""
        return kernels_for(received.device).dequant_sum_requant(_c10d.wait_tensor(received), self.layout(numel),
                                                                self.config.gather_bits)

    def all_gather(self, reduced: torch.Tensor) -> torch.Tensor:
        return _c10d.all_gather_into_tensor(reduced.reshape(-1), self.world_size, self.group_name)

    def dequantize(self, gathered: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        layout = self.layout(like.numel()).with_bits(self.config.gather_bits)
        gathered = _c10d.wait_tensor(gathered).reshape(self.world_size, -1)
        return kernels_for(gathered.device).dequantize(gathered, layout, like.dtype, like.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of x over the group. With `config.chunks` > 1 and a static size, x is cut into pieces issued stage by
        stage over all pieces: a piece's all-to-all overlaps the next piece's quantize, and so on."""
        bounds = piece_bounds(x.numel(), self.config.chunks, self.world_size * self.config.group_size)
        pieces = [x] if len(bounds) == 1 else [x.reshape(-1)[start:end] for start, end in bounds]
        received = [self.all_to_all(self.quantize(p)) for p in pieces]
        gathered = [self.all_gather(self.reduce(r, p.numel())) for r, p in zip(received, pieces)]
        outputs = [self.dequantize(g, p) for g, p in zip(gathered, pieces)]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs).view(x.shape)


@dataclass(frozen=True)
class NcclReduceScatter:
    """The first half alone, for sequence parallelism's reduce-scatter (sum, along dim 0): quantize -> all-to-all ->
    dequantize each rank's copy of this rank's chunk and sum them in float32, into the input dtype. Each chunk is
    padded to whole groups on its own, so chunk r of the payload is exactly the rows rank r gets. `impl`: the
    kernels (`kernels_for` the device unless given; the tests' simulation passes one)."""

    config: FlashCommConfig
    group_name: str
    world_size: int

    def layout(self, numel) -> PayloadLayout:
        """One chunk of numel / world_size values a rank, padded to whole groups."""
        chunk = PayloadLayout.of(numel, self.world_size, self.config).chunk_numel
        return PayloadLayout.of(chunk * self.world_size, self.world_size, self.config)

    def quantize(self, x: torch.Tensor, impl=None) -> torch.Tensor:
        validate_dtype(x.dtype)
        rows, layout = x.reshape(self.world_size, -1), self.layout(x.numel())
        # symbolic widths are padded by a symbolic amount (maybe 0) rather than guarded on
        whole = statically_known_true(layout.chunk_numel == rows.shape[1])
        padded = rows if whole else torch.nn.functional.pad(rows, (0, layout.chunk_numel - rows.shape[1]))
        return (impl or kernels_for(x.device)).quantize(padded, layout)

    def reduce(self, received: torch.Tensor, like: torch.Tensor, impl=None) -> torch.Tensor:
        """This rank's chunk from every rank (uint8 [W, chunk_bytes]), dequantized and summed: like's chunk."""
        world, layout = self.world_size, self.layout(like.numel())
        copies = (impl or kernels_for(received.device)).dequantize(received, layout, torch.float32,
                                                                  (world, layout.chunk_numel))
        width = like.numel() // world
        return copies.sum(0)[:width].to(like.dtype).reshape(like.shape[0] // world, *like.shape[1:])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        splits = [1] * self.world_size
        received = _c10d.all_to_all_single(self.quantize(x), splits, splits, self.group_name)
        return self.reduce(_c10d.wait_tensor(received), x)


@dataclass(frozen=True)
class NcclAllGather:
    """The second half alone, for sequence parallelism's all-gather (along dim 0): quantize (gather_bits) ->
    all-gather -> dequantize. Every rank dequantizes the same gathered bytes, its own chunk from the bytes it sent, so
    all ranks hold identical results. `impl` as for `NcclReduceScatter`."""

    config: FlashCommConfig
    group_name: str
    world_size: int

    def layout(self, numel) -> PayloadLayout:
        """One rank's numel values as one chunk, padded to whole groups."""
        return PayloadLayout.of(numel, 1, self.config).with_bits(self.config.gather_bits)

    def quantize(self, x: torch.Tensor, impl=None) -> torch.Tensor:
        validate_dtype(x.dtype)
        return (impl or kernels_for(x.device)).quantize(x, self.layout(x.numel()))

    def dequantize(self, gathered: torch.Tensor, like: torch.Tensor, impl=None) -> torch.Tensor:
        """Every rank's chunk (uint8 [W, chunk_bytes]) dequantized: like's shape, world_size times along dim 0."""
        world, own = self.world_size, self.layout(like.numel())
        every = dataclasses.replace(own, numel=world * own.chunk_numel, world_size=world)
        values = (impl or kernels_for(gathered.device)).dequantize(gathered, every, like.dtype,
                                                                  (world, own.chunk_numel))
        return values[:, :like.numel()].reshape(world * like.shape[0], *like.shape[1:])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        payload = self.quantize(x).reshape(-1)
        gathered = _c10d.wait_tensor(_c10d.all_gather_into_tensor(payload, self.world_size, self.group_name))
        return self.dequantize(gathered.reshape(self.world_size, -1), x)


@dataclass(frozen=True)
class SymmetricPipeline:
    """The two-step all-reduce over a symmetric-memory workspace: three kernels, the first two ending in a barrier
    across the group, ordered by a token tensor that each writes (the data they exchange lives where the graph cannot
    see it)."""

    config: FlashCommConfig
    world_size: int
    table_address: int  # the workspace's address table (symmetric.Workspace)
    rank: int

    @classmethod
    def over(cls, group_name: str, device: torch.device, numel: int, world_size: int,
             config: FlashCommConfig) -> "SymmetricPipeline":
        """The pipeline for all-reduces of up to `numel` elements over the group, its workspace allocated now (a
        collective) if needed."""
        ws = workspace(group_name, device, SymmetricLayout.of(numel, world_size, config).total_bytes)
        return cls(config, world_size, ws.table.data_ptr(), ws.handle.rank)

    def layout(self, numel) -> SymmetricLayout:
        return SymmetricLayout.of(numel, self.world_size, self.config)

    def quantize(self, x: torch.Tensor, after: torch.Tensor, token: torch.Tensor) -> None:
        from .kernels import triton_kernels

        layout = self.layout(x.numel())
        triton_kernels.quantize_symm(x, self.table_address, self.rank, layout.stride, layout.payload, after, token)

    def reduce(self, numel, token: torch.Tensor) -> None:
        from .kernels import triton_kernels

        layout = self.layout(numel)
        chunk = layout.stride * self.rank if self.rank else 0  # rank 0's: a plain 0, not a symbolic 0 * stride
        triton_kernels.dequant_sum_requant_peers(self.table_address, chunk, layout.reduced_offset, self.rank,
                                                 layout.payload, self.config.gather_bits, token)

    def dequantize(self, like: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        from .kernels import triton_kernels

        layout = self.layout(like.numel())
        return triton_kernels.dequantize_peers(self.table_address, layout.reduced_offset, layout.reduced, like.dtype,
                                               like.shape, token)

    def __call__(self, x: torch.Tensor, after: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of x over the group, its token). `after`: the token of the all-reduce before it on this workspace
        (read-only, so that tracing adds no write-back), which keeps the two in order in the graph."""
        validate_dtype(x.dtype)
        token = torch.empty(1, dtype=torch.int32, device=x.device)
        self.quantize(x, x if after is None else after, token)
        self.reduce(x.numel(), token)
        return self.dequantize(x, token), token


def simulate_halves(impl, inputs: list[torch.Tensor], config: FlashCommConfig) -> tuple[list, list]:
    """The reduce-scatter and the all-gather for W = len(inputs) simulated ranks, through one kernel implementation,
    the collectives done by indexing: (each rank's reduce-scattered chunk, each rank's all-gathered tensor)."""
    world = len(inputs)
    scatter, gather = NcclReduceScatter(config, "", world), NcclAllGather(config, "", world)
    sent = [scatter.quantize(x, impl) for x in inputs]
    scattered = [scatter.reduce(torch.stack([p[r] for p in sent]), inputs[0], impl) for r in range(world)]
    gathered = torch.cat([gather.quantize(x, impl) for x in inputs])
    return scattered, [gather.dequantize(gathered.clone(), inputs[0], impl) for _ in range(world)]


@dataclass
class SimulatedAllReduce:
    sent: list[torch.Tensor]  # each rank's first-step payload, uint8 [W, chunk_bytes]
    gathered: torch.Tensor  # the all-gathered second-step payload, uint8 [W, chunk_bytes']
    outputs: list[torch.Tensor]  # each rank's dequantized result


def simulate(impl, inputs: list[torch.Tensor], reduce_bits: int, gather_bits: int, group_size: int,
             spike_reserve: bool, rotate: bool = False) -> tuple[SimulatedAllReduce, PayloadLayout]:
    """The NCCL transport's stages for W = len(inputs) simulated ranks in one process, through one kernel
    implementation (`reference` or `triton_kernels`), the collectives done by indexing: the tests' oracle and the
    demo's error estimate."""
    world = len(inputs)
    x0 = inputs[0]
    layout = PayloadLayout(x0.numel(), world, reduce_bits, group_size, spike_reserve, rotate)
    sent = [impl.quantize(x, layout) for x in inputs]
    reduced = [impl.dequant_sum_requant(torch.stack([p[rank] for p in sent]), layout, gather_bits)
               for rank in range(world)]
    gathered = torch.cat(reduced)
    out_layout = layout.with_bits(gather_bits)
    outputs = [impl.dequantize(gathered.clone(), out_layout, x0.dtype, x0.shape) for _ in range(world)]
    return SimulatedAllReduce(sent, gathered, outputs), layout
