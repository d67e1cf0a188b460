"""Keep glibc's allocator from giving freed memory back to the kernel after every tensor.

Decoding allocates and frees tens of MiB per tile of queries. With glibc's defaults the freed
top of the heap is trimmed and large blocks are unmapped as soon as they are freed, so the next
tile faults every page in again (zero-filled by the kernel): a CLIT call on one thread spent a
quarter of its time in up to 900k minor page faults. Keeping a bounded amount of freed heap for
reuse removes those; blocks over 32 MiB (glibc's ceiling for the mmap threshold) are still mapped
per use. Operators who set glibc's own `MALLOC_*_` or `GLIBC_TUNABLES` variables keep theirs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20
# Freed heap kept for reuse. It counts as resident memory (which memory checks and cgroup limits
# see), so it is bounded: a few times a decode tile's working set (CLIT: ~50 MiB per tile).
DEFAULT_RETAIN = 256 * 2**20
_OPERATOR_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def retain_freed_memory(retain: int = DEFAULT_RETAIN) -> bool:
    """Tune glibc malloc for decoding; False where it is not glibc or the operator tuned it."""
    if any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or one without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # A fixed mmap threshold also stops glibc from moving the trim threshold on its own.
    return mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, retain) == 1
