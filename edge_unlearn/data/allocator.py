"""The allocator fix for decoding many image files: glibc's mmap threshold pinned (see
:data:`MALLOC_MMAP_THRESHOLD`)."""

from __future__ import annotations

import os

#: glibc's mmap threshold, fixed while image files are decoded. glibc raises the threshold each time it frees a
#: large mmapped block ("dynamic threshold"); decode buffers of varying size then come from the heap and fragment
#: it, and `evaluate`'s peak RSS grew ×1.7 from 2k to 32k JPEGs of mixed sizes. Fixed at glibc's own default
#: (128 KiB) it stays flat (benchmarks/data_scale.py, docs/data-scale.md).
MALLOC_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_malloc_pinned = False


def pin_malloc_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (once per process; loader workers forked later inherit it). A no-op off
    glibc, or where the user set ``MALLOC_MMAP_THRESHOLD_`` themselves. Returns whether it is in force."""
    global _malloc_pinned
    if _malloc_pinned or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return _malloc_pinned or "MALLOC_MMAP_THRESHOLD_" in os.environ
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _malloc_pinned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
    return _malloc_pinned
