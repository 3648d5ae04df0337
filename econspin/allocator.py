"""Keeping freed memory in the process: glibc's allocator told not to hand it back.

A round of a small ensemble allocates and frees tensors of a few MiB (at B = 128, N = 64:
the float64 temporaries of the spin draw, the (B, H, N, 2 d_k + d) projections). glibc serves
a block that large with fresh pages from the system (``mmap``) or hands the top of its heap
back (``trim``) once it is freed, so every round faults those pages in again, which on a
virtual machine can cost more than the arithmetic on them (docs/performance_log.md, "Fresh
pages"; docs/performance.md, "Keeping freed memory"). :func:`keep_freed_memory` raises both thresholds
(``mallopt(M_MMAP_THRESHOLD)`` and ``mallopt(M_TRIM_THRESHOLD)``, the calls behind the
environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``): freed blocks
stay with the process and are served again without faults.

The price is memory: what a round freed stays resident until the process reuses or ends it,
and a large block freed in the middle of the heap cannot go back to the system. That is a
choice for whoever owns the process, so the engine never calls this; the command line (which
owns its process) does, unless told not to (``--no-keep-memory`` or ``ECONSPIN_KEEP_MEMORY=0``),
and a library user may call it once at the start of a program. The processes a command starts
for its own work, Ray's shard workers (:mod:`econspin.sweep_ray`) and the fresh processes of
``econspin bench``'s memory section, are asked to do as their parent did
(:func:`keeps_freed_memory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt's parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks up to 1 GiB come from the heap and are reused; the heap's free top goes back to the
# system only above 2 GiB - 1 (mallopt takes an int). Both far above any per-round temporary
# of the sizes this is for, and finite, so a process that frees more than that still returns it.
KEPT_BLOCK_BYTES = 2**30
KEPT_TOP_BYTES = 2**31 - 1

# Whether this process has called keep_freed_memory: the setting its helper processes follow.
# Module state, because what it records is process state (mallopt's thresholds) that cannot be undone.
_asked = False


def glibc():
    """The process's C library when it is glibc (it has ``mallopt``), else None."""
    try:
        library = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - no dynamic C library to open (e.g. Windows)
        return None
    if not hasattr(library, "gnu_get_libc_version") or not hasattr(library, "mallopt"):
        return None  # musl, macOS: other allocators, no such thresholds
    library.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    library.mallopt.restype = ctypes.c_int
    return library


def keep_freed_memory() -> bool:
    """Tell the C allocator to keep freed memory for reuse; True if it took both settings.

    Process-wide and not undone (glibc has no call that restores its adaptive thresholds).
    Returns False, changing nothing, where the C library is not glibc. The results of a
    simulation do not depend on it, bit for bit; only its speed and resident memory do.
    """
    global _asked
    _asked = True
    library = glibc()
    if library is None:
        return False
    kept_blocks = library.mallopt(M_MMAP_THRESHOLD, KEPT_BLOCK_BYTES) == 1
    kept_top = library.mallopt(M_TRIM_THRESHOLD, KEPT_TOP_BYTES) == 1
    return kept_blocks and kept_top


def keeps_freed_memory() -> bool:
    """Whether this process asked to keep freed memory (called :func:`keep_freed_memory`).

    What the processes it starts for its own work should be asked to do: the ``econspin``
    command asks unless given ``--no-keep-memory`` or ``ECONSPIN_KEEP_MEMORY=0``.
    """
    return _asked
