"""glibc heap settings for the block-streamed runs (parity, export validation, the torch reference child).

Streaming loads and frees one block's tensors after another. glibc serves a freed large buffer's size from its
heap next time (the mmap threshold rises to the largest buffer freed, up to 32 MiB), and the heap keeps what it is
given: measured on the streamed fp32 torch reference of the XL/2 at 1024², the resident size grew by about 30 MiB a
block (1.1 -> 1.9 GiB over 28 blocks, peak 2.04 GiB). With the threshold pinned at 1 MiB every tensor gets its own
mapping and goes back to the OS when freed: 0.87 GiB throughout, peak 1.13 GiB. Both are no-ops off glibc.
"""
from __future__ import annotations

import ctypes
import gc

M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
STREAMING_THRESHOLD = 2**20


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def map_large_buffers(threshold: int = STREAMING_THRESHOLD) -> bool:
    """Serve every allocation of ``threshold`` bytes or more from its own mapping, returned to the OS on free (and
    stop glibc from raising the threshold). True when set. Costs a page fault per fresh page: for streaming runs
    only, not for conversion."""
    libc = _libc()
    return bool(libc is not None and hasattr(libc, "mallopt") and libc.mallopt(M_MMAP_THRESHOLD, threshold))


def release_freed_memory() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc keeps them in its arenas otherwise, and the
    next phase's or block's peak would sit on top of them)."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
