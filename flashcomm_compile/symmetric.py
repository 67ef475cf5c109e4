"""Quantized collectives over symmetric memory: every GPU of the group maps its peers' buffers (NVLink), so an all-to-
all or an all-gather is folded into the loads of the kernel that needs the data. An all-reduce is three kernels
(`pipeline.SymmetricPipeline`), the first two ending in a barrier; sequence parallelism's reduce-scatter and all-
gather are two kernels each, both ending in one (`pipeline.SymmetricHalf`). No NCCL call, and the quantized bytes
cross the link once, read by the kernel that needs them. The compiled code reaches the workspace through the address
of its table, a constant: the workspace is allocated when the graph is compiled, and kept for the life of the
process.

Each rank's buffer has two halves. Before its first barrier a collective writes only the lower half (an all-reduce
or a reduce-scatter its W first-step chunks, chunk r read by rank r; an all-gather its one chunk); the all-reduce
writes its requantized chunk, read by every rank, into the upper half after that barrier. Why that is safe, whatever
the sizes and kinds of consecutive collectives on one workspace:
- a peer reads a collective's lower half only between that collective's two barriers (the all-reduce's second ends
  its dequantize-sum-requantize, a half's ends the kernel that reads the peers), so no peer still reads it when the
  next collective writes it;
- a peer may still read an all-reduce's upper half after the last barrier, while this rank starts the next
  collective; that one writes the lower half first, and the upper half (an all-reduce's) only after its own first
  barrier, which every peer reaches after its previous dequantize, the last reader.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from . import cost_model
from .kernels.address_table import address_table
from .kernels.layout import PayloadLayout

MAX_WORLD_SIZE = 32  # the barrier unrolls a loop per peer; a node has far fewer GPUs
ALIGN = 16  # bytes: every chunk starts 16-byte aligned, so the kernels' loads stay vectorised
MIN_WORKSPACE_BYTES = 1 << 20


def _align(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def chunk_stride(payload: PayloadLayout) -> int:
    """Bytes from one chunk to the next in a buffer."""
    return _align(payload.chunk_bytes)


def workspace_bytes(payload: PayloadLayout, gather_bits: int | None = None) -> int:
    """Bytes of a workspace for one collective: `payload`'s chunks in the lower half, and an all-reduce's
    requantized chunk (`gather_bits`; None for the halves, which have none) in the upper half."""
    lower = payload.world_size * chunk_stride(payload)
    upper = 0 if gather_bits is None else _align(payload.with_bits(gather_bits).chunk_bytes)
    return 2 * max(lower, upper)


@dataclass(frozen=True)
class SymmetricLayout:
    """Where one collective's data lives in each rank's symmetric buffer: its chunks from the start, chunk c at
    c * stride, and an all-reduce's requantized chunk at the upper half (`reduced_offset`)."""

    payload: PayloadLayout  # what the first kernel writes
    gather_bits: int
    reduced_offset: int  # the upper half of the workspace

    @property
    def stride(self) -> int:
        return chunk_stride(self.payload)

    @property
    def reduced(self) -> PayloadLayout:
        return self.payload.with_bits(self.gather_bits)

    def payload_in(self, buffer: torch.Tensor) -> torch.Tensor:
        """The chunks in a rank's uint8 buffer: [W, stride], chunk r in row r."""
        return buffer[:self.payload.world_size * self.stride].view(self.payload.world_size, self.stride)

    def reduced_in(self, buffer: torch.Tensor) -> torch.Tensor:
        """The rank's requantized chunk in its buffer: [1, chunk bytes]."""
        return buffer[self.reduced_offset:self.reduced_offset + self.reduced.chunk_bytes].view(1, -1)


@dataclass
class Workspace:
    """One rank's symmetric buffer for a process group, the handle, and the addresses the kernels use (on the GPU;
    its own address is what the compiled code holds)."""

    buffer: torch.Tensor  # uint8
    handle: object  # torch's _SymmetricMemory: rank
    table: torch.Tensor  # int64, `address_table`

    @property
    def upper(self) -> int:
        """Where the buffer's upper half starts (sizes are powers of two: 16-byte aligned)."""
        return self.buffer.numel() // 2


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
    return Workspace(buffer, handle, address_table(handle.buffer_ptrs, handle.signal_pad_ptrs, device))


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


def peer_access_problem(world_size: int) -> str | None:
    """Why the group's GPUs cannot use symmetric memory from this process (None: they can). Ranks are taken to be
    the node's first `world_size` GPUs, one per process, as torchrun places them."""
    if cost_model.link_mode() == "p2p-disabled":
        return "NCCL_P2P_DISABLE=1"
    if world_size > MAX_WORLD_SIZE:
        return f"world size {world_size} > {MAX_WORLD_SIZE}"
    visible = torch.cuda.device_count()
    if world_size > visible:
        return f"{world_size} ranks, {visible} GPUs visible to this process"
    for a in range(world_size):
        for b in range(world_size):
            if a != b and not torch.cuda.can_device_access_peer(a, b):
                return f"GPU {a} cannot access GPU {b}'s memory"
    return None

