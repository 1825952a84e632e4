"""Giving memory back: a daemon that moves NARs allocates buffers of a few MiB, and glibc, once the first
of them is freed, raises its mmap threshold to that size and from then on keeps every such buffer in its
heap when it is freed. A busy daemon's RSS then grows to the buffers of its busiest moment and stays
there (the soak saw a quarter more within minutes). A fixed threshold maps each large buffer on its own
and unmaps it when it is freed, at the cost of a page fault per 4 KiB of every new one (not measurable
against copying the bytes)."""

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE = 256 << 10  # bytes: NAR chunks (~1 MiB) and transfer reads (up to 4 MiB) are well over it


def give_back_large_buffers(threshold: int = LARGE) -> bool:
    """Map buffers of `threshold` bytes or more on their own; whether the C library took it (glibc does)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
