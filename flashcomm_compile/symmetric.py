"""The two-step all-reduce over symmetric memory: every GPU of the group maps its peers' buffers (NVLink), so the
all-to-all is folded into the dequantize-sum-requantize kernel's loads and the all-gather into the dequantize
kernel's. One all-reduce is then three kernels (`pipeline.SymmetricPipeline`), the first two ending in a barrier,
no NCCL call, and the quantized bytes cross the link once, read by the kernel that needs them. The compiled code
reaches the workspace through the address of its table, a constant: the workspace is allocated when the graph is
compiled, and kept for the life of the process.

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

from . import cost_model
from .config import FlashCommConfig
from .kernels.address_table import address_table
from .kernels.layout import PayloadLayout

MAX_WORLD_SIZE = 32  # the barrier unrolls a loop per peer; a node has far fewer GPUs
ALIGN = 16  # bytes: every chunk starts 16-byte aligned, so the kernels' loads stay vectorised
MIN_WORKSPACE_BYTES = 1 << 20


def _align(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


@dataclass(frozen=True)
class SymmetricLayout:
    """Where one all-reduce's data lives in each rank's symmetric buffer."""

    payload: PayloadLayout  # the first step
    gather_bits: int

    @classmethod
    def of(cls, numel, world_size: int, config: FlashCommConfig) -> "SymmetricLayout":
        return cls(PayloadLayout.of(numel, world_size, config), config.gather_bits)

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
    """One rank's symmetric buffer for a process group, the handle, and the addresses the kernels use (on the GPU;
    its own address is what the compiled code holds)."""

    buffer: torch.Tensor  # uint8
    handle: object  # torch's _SymmetricMemory: rank
    table: torch.Tensor  # int64, `address_table`


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

