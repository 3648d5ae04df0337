"""Buffers kept from round to round: the blocks' memory, reused instead of faulted in afresh."""

from __future__ import annotations

import threading

import torch

_WORKSPACES = threading.local()  # per thread: {(name, dtype, device): the largest buffer asked for}


def workspace(name: str, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat buffer of ``size`` entries, the same memory from round to round (per thread and name).

    A fresh tensor of a few MiB each round comes from pages the C allocator has just taken
    from the system (glibc serves such sizes by mmap and gives them back on free), and
    faulting those pages in cost more than the work done in them: at B = 128, N = 64 the
    float64 running sums of the sampled round's inversion (4 MiB) took 5 ms a round in a
    running simulation against 1 ms when their memory was reused (docs/performance.md).
    A buffer is valid until the next call with the same name on the same thread: the
    callers use it within one round and return nothing that aliases it.

    On the CPU only. Elsewhere (CUDA) a fresh tensor: torch's caching allocator hands the same
    memory back with nothing to fault in, and a buffer kept from call to call would outlive a
    graph that CUDA graphs captured (run.compile: reduce-overhead) in the graphs' own memory.
    """
    if torch.device(device).type != "cpu":
        return torch.empty(size, dtype=dtype, device=device)
    buffers = getattr(_WORKSPACES, "buffers", None)
    if buffers is None:
        buffers = _WORKSPACES.buffers = {}
    key = (name, dtype, torch.device(device))
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < size:
        buffer = buffers[key] = torch.empty(size, dtype=dtype, device=device)
    return buffer[:size]
