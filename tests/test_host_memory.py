"""glibc's mmap threshold fixed for training, and the heap-only allocator (a training option; the default of
evaluation and inference) (``scripts.host_memory``)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import textwrap

import pytest

from bundle_utils import BUNDLE
from scripts import host_memory
from scripts.host_memory import malloc_library, set_malloc_heap_only, set_malloc_mmap_threshold

PROBE = textwrap.dedent("""
    import ctypes, sys
    from scripts.host_memory import set_malloc_heap_only, set_malloc_mmap_threshold

    # first, as the training configs do
    applied = set_malloc_mmap_threshold(int(sys.argv[1])) | set_malloc_heap_only(sys.argv[2])
    import torch

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def mapped_by(n):  # bytes of mapped blocks added while a tensor of n floats is alive
        before = libc.mallinfo2().hblkhd
        x = torch.empty(n)
        grown = libc.mallinfo2().hblkhd - before
        del x
        return grown

    n = 1 << 20 if len(sys.argv) < 4 else int(sys.argv[3])  # 4 MiB by default
    first = mapped_by(n)
    print(applied, first, mapped_by(n))
""")


def _probe(threshold: int, heap_only: str = "false", floats: int = 1 << 20) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(threshold), heap_only, str(floats)], cwd=BUNDLE,
                         capture_output=True, text=True, check=True)
    applied, first, second = out.stdout.split()
    return applied, int(first), int(second)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_fixed_threshold_maps_blocks_that_the_adaptive_one_keeps_on_the_heap() -> None:
    applied, first, second = _probe(0)
    assert applied == "False"
    # glibc's adaptive threshold: the first 4 MiB block is mapped, freeing it raises the threshold above 4 MiB,
    # so the next one comes from the heap (and stays resident there when freed)
    assert first >= 4 * 1024 * 1024 and second == 0
    applied, first, second = _probe(1 << 20)
    assert applied == "True"
    assert first >= 4 * 1024 * 1024 and second >= 4 * 1024 * 1024  # every 4 MiB block has its own mapping


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_heap_only_maps_no_block_even_above_the_largest_threshold() -> None:
    applied, first, second = _probe(0, "false", 1 << 24)  # 64 MiB: above any mmap threshold glibc allows
    assert applied == "False" and first >= 64 * 1024 * 1024 and second >= 64 * 1024 * 1024
    applied, first, second = _probe(1 << 24, "true", 1 << 24)  # heap-only overrides a fixed threshold
    assert applied == "True" and first == 0 and second == 0


def test_heap_only_values() -> None:
    assert set_malloc_heap_only(False) is False and set_malloc_heap_only("false") is False
    with pytest.raises(ValueError, match="malloc_heap_only"):
        set_malloc_heap_only("maybe")


def test_threshold_values() -> None:
    assert set_malloc_mmap_threshold(None) is False and set_malloc_mmap_threshold(0) is False
    for bad in (-1, 64 * 1024 * 1024):
        with pytest.raises(ValueError, match="malloc_mmap_threshold"):
            set_malloc_mmap_threshold(bad)


def test_training_configs_fix_the_threshold_before_anything_is_built() -> None:
    from monai.bundle import ConfigParser

    from bundle_utils import CONFIGS

    for files in (["train.json"], ["train.json", "multi_gpu_train.json"]):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / f) for f in files])
        steps = parser["initialize"]
        index = steps.index("$scripts.host_memory.set_malloc_mmap_threshold(@malloc_mmap_threshold)")
        assert index < min(i for i, step in enumerate(steps) if "@" in step and "set_malloc" not in step
                           and "init_distributed" not in step)  # before any step that builds components
        assert parser.get_parsed_content("malloc_mmap_threshold") == 16 * 1024 * 1024
        heap_only = steps.index("$scripts.host_memory.set_malloc_heap_only(@malloc_heap_only)")
        assert heap_only == index + 1 and parser.get_parsed_content("malloc_heap_only") is False


def test_evaluation_and_inference_configs_allocate_from_the_heap_first() -> None:
    from monai.bundle import ConfigParser

    from bundle_utils import CONFIGS

    for files in (["train.json", "evaluate.json"], ["inference.json"]):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / f) for f in files])
        steps = parser["initialize"]
        assert steps[0] == "$scripts.host_memory.set_malloc_heap_only(@malloc_heap_only)", files
        assert parser.get_parsed_content("malloc_heap_only") is True, files
        assert not any("set_malloc_mmap_threshold" in step for step in steps), files


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_malloc_library_is_glibc_in_a_plain_process() -> None:
    assert malloc_library().startswith("libc.so")


def test_glibc_settings_do_nothing_when_malloc_comes_from_another_library(monkeypatch) -> None:
    monkeypatch.setattr(host_memory, "malloc_library", lambda: "libtcmalloc_minimal.so.4")
    assert set_malloc_mmap_threshold(16 * 1024 * 1024) is False
    assert set_malloc_heap_only(True) is False


TCMALLOC = ctypes.util.find_library("tcmalloc_minimal")


@pytest.mark.skipif(TCMALLOC is None, reason="tcmalloc (libtcmalloc-minimal4) is not installed")
def test_preloaded_tcmalloc_is_detected_and_left_alone() -> None:
    probe = ("from scripts.host_memory import malloc_library, set_malloc_heap_only, set_malloc_mmap_threshold; "
             "print(malloc_library(), set_malloc_mmap_threshold(1 << 24), set_malloc_heap_only(True))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=BUNDLE, capture_output=True, text=True, check=True,
                         env={**os.environ, "LD_PRELOAD": TCMALLOC})
    assert out.stdout.split() == [TCMALLOC, "False", "False"]
