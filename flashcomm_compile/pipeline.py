"""The stages of one quantized all-reduce, and of its two halves alone (the reduce-scatter and the all-gather of
sequence parallelism), described once per transport.

The pass traces these into the post-grad graph (Inductor then launches the Triton kernels itself; on CPUs it calls
the torch reference's custom ops), the eager API calls them, and the benchmarks time them stage by stage. Each
pipeline holds what the compile knows (config, group, world size, workspace), so nothing is rebuilt per call.

NCCL transport: quantize -> all-to-all (the reduce-scatter) -> dequantize-sum-requantize -> all-gather -> dequantize.
Symmetric memory: the all-to-all and the all-gather are folded into the kernels' loads from the peers' buffers, with
a barrier at the end of the kernels that let peers read; see `symmetric.py` for the workspace and why those barriers
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
from .symmetric import SymmetricLayout, chunk_stride, workspace, workspace_bytes

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


def scatter_layout(numel, world_size: int, config: FlashCommConfig) -> PayloadLayout:
    """The reduce-scatter's payload: W chunks of numel / W values, each padded to whole groups on its own, so chunk
    r is exactly the rows rank r gets."""
    chunk = PayloadLayout.of(numel, world_size, config).chunk_numel
    return PayloadLayout.of(chunk * world_size, world_size, config)


def scatter_rows(x: torch.Tensor, layout: PayloadLayout) -> torch.Tensor:
    """x as the W rows of the reduce-scatter's chunks, each padded to the layout's whole groups."""
    rows = x.reshape(layout.world_size, -1)
    # symbolic widths are padded by a symbolic amount (maybe 0) rather than guarded on
    if statically_known_true(layout.chunk_numel == rows.shape[1]):
        return rows
    return torch.nn.functional.pad(rows, (0, layout.chunk_numel - rows.shape[1]))


def scattered_shape(like: torch.Tensor, world_size: int) -> tuple:
    return (like.shape[0] // world_size, *like.shape[1:])


def gather_layout(numel, config: FlashCommConfig) -> PayloadLayout:
    """The all-gather's payload: one rank's numel values as one chunk, padded to whole groups (gather_bits)."""
    return PayloadLayout.of(numel, 1, config).with_bits(config.gather_bits)


def gathered_layout(own: PayloadLayout, world_size: int) -> PayloadLayout:
    """The W gathered chunks of `own`, one per rank."""
    return dataclasses.replace(own, numel=world_size * own.chunk_numel, world_size=world_size)


def gathered_values(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Each rank's dequantized chunk [W, chunk_numel] without its padding: like's shape, W times along dim 0."""
    world = values.shape[0]
    return values[:, :like.numel()].reshape(world * like.shape[0], *like.shape[1:])


@dataclass(frozen=True)
class NcclReduceScatter:
    """The first half alone, for sequence parallelism's reduce-scatter (sum, along dim 0): quantize -> all-to-all ->
    dequantize each rank's copy of this rank's chunk into float32 and sum them in rank order, into the input dtype
    (the symmetric-memory kernel sums alike: the same bytes). `impl`: the kernels (`kernels_for` the device unless
    given; the tests' simulation passes one)."""

    config: FlashCommConfig
    group_name: str
    world_size: int

    def layout(self, numel) -> PayloadLayout:
        return scatter_layout(numel, self.world_size, self.config)

    def quantize(self, x: torch.Tensor, impl=None) -> torch.Tensor:
        validate_dtype(x.dtype)
        layout = self.layout(x.numel())
        return (impl or kernels_for(x.device)).quantize(scatter_rows(x, layout), layout)

    def reduce(self, received: torch.Tensor, like: torch.Tensor, impl=None) -> torch.Tensor:
        """This rank's chunk from every rank (uint8 [W, chunk_bytes]), dequantized and summed: like's chunk."""
        world, layout = self.world_size, self.layout(like.numel())
        copies = (impl or kernels_for(received.device)).dequantize(received, layout, torch.float32,
                                                                  (world, layout.chunk_numel))
        total = copies[0]
        for copy in copies[1:]:
            total = total + copy
        return total[:like.numel() // world].to(like.dtype).reshape(scattered_shape(like, world))

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
        return gather_layout(numel, self.config)

    def quantize(self, x: torch.Tensor, impl=None) -> torch.Tensor:
        validate_dtype(x.dtype)
        return (impl or kernels_for(x.device)).quantize(x, self.layout(x.numel()))

    def dequantize(self, gathered: torch.Tensor, like: torch.Tensor, impl=None) -> torch.Tensor:
        """Every rank's chunk (uint8 [W, chunk_bytes]) dequantized: like's shape, world_size times along dim 0."""
        every = gathered_layout(self.layout(like.numel()), self.world_size)
        values = (impl or kernels_for(gathered.device)).dequantize(gathered, every, like.dtype,
                                                                  (self.world_size, every.chunk_numel))
        return gathered_values(values, like)

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
    upper: int  # where the workspace's upper half starts (symmetric.Workspace.upper)

    @classmethod
    def over(cls, group_name: str, device: torch.device, numel: int, world_size: int,
             config: FlashCommConfig) -> "SymmetricPipeline":
        """The pipeline for all-reduces of up to `numel` elements over the group, its workspace allocated now (a
        collective) if needed."""
        ws = workspace(group_name, device, workspace_bytes(PayloadLayout.of(numel, world_size, config),
                                                           config.gather_bits))
        return cls(config, world_size, ws.table.data_ptr(), ws.handle.rank, ws.upper)

    def layout(self, numel) -> SymmetricLayout:
        return SymmetricLayout(PayloadLayout.of(numel, self.world_size, self.config), self.config.gather_bits,
                               self.upper)

    def quantize(self, x: torch.Tensor, after: torch.Tensor, token: torch.Tensor) -> None:
        from .kernels import triton_kernels

        layout = self.layout(x.numel())
        triton_kernels.quantize_symm(x, self.table_address, self.rank, layout.stride, layout.payload, after, token)

    def reduce(self, numel, token: torch.Tensor) -> None:
        from .kernels import triton_kernels

        layout = self.layout(numel)
        triton_kernels.dequant_sum_requant_peers(self.table_address, _chunk_offset(layout.stride, self.rank),
                                                 layout.reduced_offset, self.rank, layout.payload,
                                                 self.config.gather_bits, token)

    def dequantize(self, like: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        from .kernels import triton_kernels

        layout = self.layout(like.numel())
        return triton_kernels.dequantize_peers(self.table_address, layout.reduced_offset, layout.reduced, like.dtype,
                                               like.shape, token)

    def __call__(self, x: torch.Tensor, after: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of x over the group, its token). `after`: the token of the collective before it on this workspace
        (read-only, so that tracing adds no write-back), which keeps the two in order in the graph."""
        validate_dtype(x.dtype)
        token = torch.empty(1, dtype=torch.int32, device=x.device)
        self.quantize(x, x if after is None else after, token)
        self.reduce(x.numel(), token)
        return self.dequantize(x, token), token


def _chunk_offset(stride, rank: int):
    """Where this rank's chunk lies in every rank's buffer: rank 0's a plain 0, not a symbolic 0 * stride."""
    return stride * rank if rank else 0


@dataclass(frozen=True)
class SymmetricHalf:
    """One half of the pipeline over a symmetric-memory workspace, as a subclass defines it: `payload` (what its
    quantize writes), `quantize` into this rank's buffer, ending in the first barrier, then `collect`, which reads
    the peers' chunks and ends in the second (the next collective writes where the chunks lie). Tokens order it
    among the workspace's collectives, as `SymmetricPipeline`'s do. `barrier` False: for ranks simulated one after
    another (the tests, under Triton's interpreter)."""

    config: FlashCommConfig
    world_size: int
    table_address: int
    rank: int
    barrier: bool = True

    @classmethod
    def over(cls, group_name: str, device: torch.device, numel: int, world_size: int,
             config: FlashCommConfig) -> "SymmetricHalf":
        """For inputs of up to `numel` elements, the workspace allocated now (a collective) if needed."""
        ws = workspace(group_name, device, workspace_bytes(cls.payload(numel, world_size, config)))
        return cls(config, world_size, ws.table.data_ptr(), ws.handle.rank)

    def __call__(self, x: torch.Tensor, after: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the collective's result, its token); `after` as for `SymmetricPipeline`."""
        token = torch.empty(1, dtype=torch.int32, device=x.device)
        self.quantize(x, x if after is None else after, token)
        return self.collect(x, token), token


class SymmetricReduceScatter(SymmetricHalf):
    """The reduce-scatter: every rank's chunk quantized into this rank's buffer, then this rank's chunk dequantized
    from every rank's buffer and summed."""

    payload = staticmethod(scatter_layout)

    def quantize(self, x: torch.Tensor, after: torch.Tensor, token: torch.Tensor) -> None:
        from .kernels import triton_kernels

        validate_dtype(x.dtype)
        layout = self.payload(x.numel(), self.world_size, self.config)
        triton_kernels.quantize_symm(scatter_rows(x, layout), self.table_address, self.rank, chunk_stride(layout),
                                     layout, after, token, self.barrier)

    def collect(self, like: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """This rank's chunk of the sum."""
        from .kernels import triton_kernels

        layout = self.payload(like.numel(), self.world_size, self.config)
        return triton_kernels.dequant_sum_peers(self.table_address, _chunk_offset(chunk_stride(layout), self.rank),
                                                self.rank, layout, like.dtype, scattered_shape(like, self.world_size),
                                                token, self.barrier)


class SymmetricAllGather(SymmetricHalf):
    """The all-gather: this rank's values quantized as one chunk into its buffer, then every rank's chunk
    dequantized from its buffer (every rank dequantizes the same bytes)."""

    @staticmethod
    def payload(numel, world_size: int, config: FlashCommConfig) -> PayloadLayout:
        return gather_layout(numel, config)

    def quantize(self, x: torch.Tensor, after: torch.Tensor, token: torch.Tensor) -> None:
        from .kernels import triton_kernels

        validate_dtype(x.dtype)
        layout = self.payload(x.numel(), self.world_size, self.config)
        triton_kernels.quantize_symm(x, self.table_address, self.rank, 0, layout, after, token, self.barrier,
                                     self.world_size)

    def collect(self, like: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Every rank's values, along dim 0."""
        from .kernels import triton_kernels

        every = gathered_layout(self.payload(like.numel(), self.world_size, self.config), self.world_size)
        values = triton_kernels.dequantize_peers(self.table_address, 0, every, like.dtype,
                                                 (self.world_size, every.chunk_numel), token, self.rank, self.barrier)
        return gathered_values(values, like)


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
