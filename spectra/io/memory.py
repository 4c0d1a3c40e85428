"""Keep resident memory at what the analysis holds, not what the allocator kept.

spectra allocates and frees a few float64 matrices of 10–150 MB per module.
glibc's malloc serves blocks above its mmap threshold with ``mmap`` and gives
them back on ``free``, but it raises that threshold (up to 32 MB) each time
such a block is freed, after which mid-sized blocks (the 16 MB strips of the
Gram and of the base conversion, a 32 MB bf16 weight) come from the heap
arenas of whichever thread asked, where fragmentation keeps them. With two
worker threads this made peak RSS grow with the number of layers (measured on
a 4096² bf16 model: 1.52 GB at 8 layers, 1.85 GB at 32). A fixed threshold
stops the drift: every block of 4 MiB or more is mapped and unmapped on its
own (1.15 GB at 8 layers, for no measurable time).

The setting is process-wide, so the command line makes it, and so do
``spectra sweep``'s worker processes; a program that imports spectra can call
``release_large_blocks()`` itself. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["release_large_blocks"]

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
MMAP_THRESHOLD = 4 * 1024 * 1024  # bytes


def release_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve blocks of ``threshold`` bytes or more by mmap, at a fixed threshold (glibc).

    Returns whether the setting was made (False off Linux, or where the C
    library has no ``mallopt``).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library Python itself is linked with
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, threshold) == 1
