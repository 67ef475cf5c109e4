"""The two-step all-reduce over symmetric memory: every GPU of the group maps its peers' buffers (NVLink), so the
all-to-all is folded into the dequantize-sum-requantize kernel's loads and the all-gather into the dequantize
kernel's. One all-reduce is then three kernels and two barriers, no NCCL call, and the quantized bytes cross the
link once, read by the kernel that needs them.

Each rank's buffer holds the W first-step chunks it quantized (chunk r is read by rank r), then the requantized
chunk it reduced (read by every rank). Between the steps a barrier makes the writes visible; the second barrier
also guarantees, for the next all-reduce, that no peer still reads a chunk about to be overwritten (a rank passes it
only after every peer finished reading its first-step chunks, and it reaches the next first barrier only after its
own dequantize, the last reader of the requantized chunks).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from .collective import nccl_all_reduce, two_step_all_reduce
from .config import FlashCommConfig
from .kernels.layout import PayloadLayout, validate_dtype

ALIGN = 16  # bytes: every chunk starts 16-byte aligned, so the kernels' loads stay vectorised
MIN_WORKSPACE_BYTES = 1 << 20


def _align(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


@dataclass(frozen=True)
class SymmetricLayout:
    """Where one all-reduce's data lives in each rank's symmetric buffer."""

    payload: PayloadLayout  # the first step
    gather_bits: int

    @property
    def stride(self) -> int:
        """Bytes from one first-step chunk to the next."""
        return _align(self.payload.chunk_bytes)

    @property
    def reduced(self) -> PayloadLayout:
        return self.payload.with_bits(self.gather_bits)

    @property
    def reduced_offset(self) -> int:
        return self.payload.world_size * self.stride

    @property
    def total_bytes(self) -> int:
        return self.reduced_offset + _align(self.reduced.chunk_bytes)

    def payload_in(self, buffer: torch.Tensor) -> torch.Tensor:
        """The first-step chunks in a rank's uint8 buffer: [W, stride], chunk r in row r."""
        return buffer[:self.reduced_offset].view(self.payload.world_size, self.stride)

    def reduced_in(self, buffer: torch.Tensor) -> torch.Tensor:
        """The rank's requantized chunk in its buffer: [1, chunk bytes]."""
        return buffer[self.reduced_offset:self.reduced_offset + self.reduced.chunk_bytes].view(1, -1)


@dataclass
class Workspace:
    """One rank's symmetric buffer for a process group, its peers' addresses (on the GPU) and the handle."""

    buffer: torch.Tensor  # uint8
    handle: object  # torch's _SymmetricMemory: rank, barrier()
    table: torch.Tensor  # int64 [W]: every rank's buffer address


_workspaces: dict[tuple[str, int], Workspace] = {}
_outgrown: list[Workspace] = []  # kept alive: a peer may still read a buffer this rank no longer uses


def workspace(group_name: str, device: torch.device, nbytes: int) -> Workspace:
    """The group's workspace of at least `nbytes`, allocated (a collective: every rank asks for the same sizes, in
    the same order) when missing or too small. Sizes round up to powers of two so that growth is rare."""
    key = (group_name, device.index)
    current = _workspaces.get(key)
    if current is not None and current.buffer.numel() >= nbytes:
        return current
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"flashcomm symm_mem: an all-reduce needs a {nbytes}-byte workspace, more than the "
                           f"{0 if current is None else current.buffer.numel()} bytes allocated, during CUDA graph "
                           "capture; run the model once with the largest input before capturing")
    size = max(MIN_WORKSPACE_BYTES, 1 << (nbytes - 1).bit_length())
    created = _outside_graph_pools(device, _create, group_name, device, size)
    if current is not None:
        _outgrown.append(current)
    _workspaces[key] = created
    return created


def _create(group_name: str, device: torch.device, size: int) -> Workspace:
    import torch.distributed._symmetric_memory as symm_mem

    buffer = symm_mem.empty(size, dtype=torch.uint8, device=device)
    handle = symm_mem.rendezvous(buffer, group_name)
    table = torch.tensor(handle.buffer_ptrs, dtype=torch.int64, device=device)
    return Workspace(buffer, handle, table)


def _outside_graph_pools(device: torch.device, fn, *args):
    """fn(*args) on a fresh thread using `device`. The workspace outlives the call that creates it, but under
    Inductor's CUDA graphs (mode="reduce-overhead") that call is a warm-up whose thread allocates from the graph's
    private pool, which then refuses untracked live tensors (the address table, and the handle's own device arrays).
    Pools are per thread."""
    result, error = [], []

    def run():
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            result.append(fn(*args))
        except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
            error.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def symmetric_all_reduce(x: torch.Tensor, group_name: str, world_size: int, config: FlashCommConfig) -> torch.Tensor:
    """Sum of x over the group, quantized as `config` says; bitwise equal on every rank, and to the NCCL path's."""
    from .kernels import triton_kernels  # CUDA only: symmetric memory has no CPU implementation

    validate_dtype(x.dtype)
    layout = SymmetricLayout(PayloadLayout(x.numel(), world_size, config.reduce_bits, config.group_size,
                                           config.spike_reserve), config.gather_bits)
    ws = workspace(group_name, x.device, layout.total_bytes)
    triton_kernels.quantize(x, layout.payload, out=layout.payload_in(ws.buffer))
    ws.handle.barrier(channel=0)
    triton_kernels.dequant_sum_requant_peers(ws.table, ws.handle.rank * layout.stride, layout.payload,
                                             config.gather_bits, layout.reduced_in(ws.buffer))
    ws.handle.barrier(channel=0)
    return triton_kernels.dequantize_peers(ws.table, layout.reduced_offset, layout.reduced, x.dtype, x.shape)


@torch.library.custom_op("flashcomm::symm_mem_all_reduce", mutates_args=())
def _symm_mem_all_reduce(x: torch.Tensor, group_name: str, world_size: int, threshold_bytes: int, reduce_bits: int,
                         gather_bits: int, group_size: int, spike_reserve: bool) -> torch.Tensor:
    if x.numel() * x.element_size() < threshold_bytes:
        return nccl_all_reduce(x, group_name)
    config = FlashCommConfig(reduce_bits=reduce_bits, gather_bits=gather_bits, group_size=group_size,
                             spike_reserve=spike_reserve, mode="always")
    if x.device.type != "cuda":  # inspection on a CPU for a GPU target: the NCCL transport computes the same bytes
        return two_step_all_reduce(x, group_name, world_size, config)
    return symmetric_all_reduce(x, group_name, world_size, config)


@_symm_mem_all_reduce.register_fake
def _(x, group_name, world_size, threshold_bytes, reduce_bits, gather_bits, group_size, spike_reserve):
    return torch.empty_like(x)


def symm_mem_all_reduce(x: torch.Tensor, group_name: str, world_size: int, threshold_bytes: int,
                        config: FlashCommConfig) -> torch.Tensor:
    """The pass's replacement on transport "symm_mem": one op, opaque to Inductor, running the symmetric-memory
    pipeline from `threshold_bytes` (0 where the size was decided at compile time) and NCCL's all-reduce below."""
    return torch.ops.flashcomm.symm_mem_all_reduce(x, group_name, world_size, threshold_bytes, config.reduce_bits,
                                                   config.gather_bits, config.group_size, config.spike_reserve)
