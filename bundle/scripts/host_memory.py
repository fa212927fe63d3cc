"""Host (CPU) memory: glibc's mmap threshold for training, a heap-only allocator for evaluation and inference.

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
(``benchmarks/notebook_model.md``).

Every mapped block costs page faults when it is first written, and the kernel zeroes each page. A training step
(batch 16, 128 x 128) maps about 3.5 GiB of such blocks; on the 2-core virtual machines of the benchmarks that is
2.5-5 CPU-seconds of system time per step. :func:`set_malloc_heap_only` is the other end of the trade: no block is
mapped and the heap is never trimmed, so after the first steps every block reuses resident memory. In 3 alternating
benchmark rounds there the median training step took 24-40 % less time and the peak resident memory was 0.2-0.4 GB
higher (the heap's free gaps), which is why it is an option for training (``malloc_heap_only``) and not its default.
Evaluation and inference allocate the same blocks every batch and keep far less alive, so there the heap's gaps cost
little: ``evaluate.json`` and ``inference.json`` set ``malloc_heap_only`` by default. Whatever the threshold, a
block above 32 MiB that the free heap cannot hold gets a fresh mapping, faulted in again every batch (in inference,
the 128 x 128 activations of a batch of 16); heap-only inference (``inference.json``, 128 x 128, CPU) over 403 PNGs
took 50-53 s instead of 57-59 s (system time 3 s instead of 9 s), over 48 DICOMs of 2000-3000 pixels per side 91-93
s instead of 101-103 s, at the same peak resident memory within 3 %; evaluation at 128 x 128 42-44 s instead of
44-49 s (``benchmarks/notebook_model.md``).

A different allocator avoids the trade: with tcmalloc preloaded (``LD_PRELOAD``, README) freed blocks stay in its
size-class caches, so steps neither fault nor fragment: on those machines the median step took 7.7-8.0 s instead
of 12.0-13.0 s, at a peak of 2.17-2.18 GB instead of 2.22-2.24 GB (the published code: 12.4-13.3 s -> 8.2-8.9 s).
Both settings here are for glibc's allocator and do nothing (logged) when ``malloc`` comes from another library
(:func:`malloc_library`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

from .utils import as_bool

__all__ = ["malloc_library", "set_malloc_mmap_threshold", "set_malloc_heap_only"]

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
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
    libc = _glibc()
    applied = libc is not None and bool(libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(nbytes)))
    if applied:
        logger.info(f"glibc mmap threshold fixed at {nbytes} bytes (malloc_mmap_threshold); CPU training steps are "
                    "faster with tcmalloc preloaded (README)")
    return applied


def set_malloc_heap_only(enabled: bool | str) -> bool:
    """Serve every glibc allocation from the heap and never trim it, for the rest of the process.

    Faster where page faults are expensive; for training at a higher peak resident memory (module docstring).
    Call it before the first large allocation; it overrides :func:`set_malloc_mmap_threshold`. Data-loader worker
    processes forked afterwards inherit it.

    Args:
        enabled: ``False`` (or the command line's ``"false"``) leaves the allocator as it is.

    Returns:
        whether the allocator was changed: ``False`` when disabled, off Linux, or with a C library other than glibc.
    """
    if not as_bool(enabled, "malloc_heap_only"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # M_MMAP_MAX 0: no block gets its own mapping; the largest int trim threshold: free memory at the heap's top is kept
    applied = bool(libc.mallopt(ctypes.c_int(M_MMAP_MAX), ctypes.c_int(0)))
    applied = applied and bool(libc.mallopt(ctypes.c_int(M_TRIM_THRESHOLD), ctypes.c_int(2**31 - 1)))
    if applied:
        logger.info("glibc allocates from the heap only and keeps freed memory (malloc_heap_only)")
    return applied


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p), ("dli_sname", ctypes.c_char_p),
                ("dli_saddr", ctypes.c_void_p)]


def malloc_library() -> str | None:
    """File name of the shared library whose ``malloc`` this process calls (``"libc.so.6"`` for glibc's,
    ``"libtcmalloc_minimal.so.4"`` under ``LD_PRELOAD``, ...); ``None`` off Linux or when it cannot be told."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        process = ctypes.CDLL(None)
        info = _DlInfo()
        if not process.dladdr(ctypes.cast(process.malloc, ctypes.c_void_p), ctypes.byref(info)) or not info.dli_fname:
            return None
    except (OSError, AttributeError):
        return None
    return os.path.basename(info.dli_fname.decode())


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc on Linux and its ``malloc`` is the one in use, else ``None``
    (other C libraries differ in ``mallopt``; a preloaded allocator ignores it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version"):
        return None
    library = malloc_library()
    if library is not None and not library.startswith("libc."):
        logger.info(f"malloc comes from {library}, not glibc: malloc_mmap_threshold and malloc_heap_only do not apply")
        return None
    return libc
