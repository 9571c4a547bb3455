"""The C heap under PyTorch's CPU tensors: two glibc settings (no-ops on other C libraries).

PyTorch's CPU allocator is plain ``malloc``/``free``. glibc serves a large block by ``mmap``
and returns it to the OS on ``free``, and trims the top of its heap when more than a
threshold is free, so a training loop that allocates and frees the same activations every
step pays for fresh zeroed pages every time: on the digits-mlp training step that was 14% of
the step's time in the kernel (page faults), not in arithmetic (docs/benchmarks, "Training speed").
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

__all__ = ["keep_freed_memory", "release_free_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused after free ...
MMAP_THRESHOLD_BYTES = 256 * 2**20
# ... and up to this much free memory at the heap's top stays mapped between steps.
TRIM_THRESHOLD_BYTES = 512 * 2**20


def _load_libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "mallopt") else None  # glibc only
    except OSError:
        return None


_libc = _load_libc()


def keep_freed_memory() -> bool:
    """Let freed tensor memory be reused instead of unmapped (process-wide; idempotent).

    Costs at most ``TRIM_THRESHOLD_BYTES`` of freed memory kept resident, plus what blocks
    under ``MMAP_THRESHOLD_BYTES`` leave between live ones. Returns False where the C library
    is not glibc (nothing changed).
    """
    if _libc is None:
        return False
    ok = _libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    ok &= _libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return bool(ok)


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    Reading checkpoints allocates and frees many large blocks; glibc keeps such pages mapped
    inside its heap, so without this the process's resident memory would keep what reading
    the zoo once needed, and grow with the number of checkpoints read.
    """
    if _libc is not None:
        _libc.malloc_trim(0)
