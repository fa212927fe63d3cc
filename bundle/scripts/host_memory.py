"""Host (CPU) memory for training: a fixed glibc mmap threshold.

PyTorch allocates CPU tensors with ``malloc``. glibc serves a request from its heap unless it is at least the
*mmap threshold*, which starts at 128 KiB and rises to the size of every mapped block that is freed, up to
32 MiB. A training step frees and re-allocates thousands of activations and gradients, so after the first step
nearly all of them come from the heap, whose free gaps the next step cannot always reuse: between steps the
process keeps about 0.8 GB of freed heap resident (CPU, batch 16, 128 x 128), on top of which the next step's
activations are allocated. With the threshold fixed before the first large allocation (``mallopt``), glibc stops
adapting it and its heap-trim threshold: a block of at least that size that the heap's free top cannot hold gets
its own mapping, returned to the system when freed, and free memory at the top of the heap beyond 128 KiB is
returned too. ``train.json`` fixes it at 16 MiB (``malloc_mmap_threshold``): peak resident memory of the training
step 2.34 -> 2.26 GB (mean of 3 runs each) with no step-time difference beyond the noise of the measurement
(``bundle/docs/benchmarks_model.md``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["set_malloc_mmap_threshold"]

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
MAX_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems


def set_malloc_mmap_threshold(nbytes: int | None) -> bool:
    """Fix glibc's mmap threshold at ``nbytes`` for the rest of the process and the worker processes it forks.

    Args:
        nbytes: the threshold in bytes; ``None`` or ``0`` leaves the allocator as it is.

    Returns:
        whether the threshold was set: ``False`` when left as it is, off Linux, or with a C library other than
        glibc.

    Raises:
        ValueError: ``nbytes`` is negative or above glibc's limit (32 MiB).
    """
    if not nbytes:
        return False
    nbytes = int(nbytes)
    if not 0 < nbytes <= MAX_THRESHOLD:
        raise ValueError(f"malloc_mmap_threshold must be 0 (off) or 1 to {MAX_THRESHOLD} bytes, got {nbytes}.")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: other C libraries differ in mallopt
        return False
    applied = bool(libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(nbytes)))
    if applied:
        logger.info(f"glibc mmap threshold fixed at {nbytes} bytes (malloc_mmap_threshold)")
    return applied
