"""Benchmark of the SimSID/HCASC generator: parameters, training step, inference, peak memory.

Every measurement (one mode at one precision) runs in a fresh subprocess so that its peak resident set
size (``ru_maxrss``) belongs to it alone. Usage (from the repository root)::

    python benchmarks/bench_model.py --threads 2 --repeats 5
    LD_PRELOAD=libtcmalloc_minimal.so.4 python benchmarks/bench_model.py ...   # with tcmalloc (README)

The training step is the generator's: forward (train mode) + discriminator logits of the reconstruction
+ every generator loss term + backward + Adam step (fused kernel unless ``--no-fused-adam``) +
memory-queue write. Inference is one batch through
the generator (eval mode) plus the discriminator score, under ``torch.inference_mode``. Each measurement sets
glibc's allocator as the bundle's config for it does (``--malloc-mmap-threshold``, ``--malloc-heap-only``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.host_memory import malloc_library, set_malloc_heap_only, set_malloc_mmap_threshold  # noqa: E402
from scripts.losses import GeneratorLoss  # noqa: E402
from scripts.networks import Discriminator, SimSIDGenerator  # noqa: E402


def _precision(name: str) -> contextlib.AbstractContextManager:
    if name == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _measure(mode: str, precision: str, args: argparse.Namespace) -> dict:
    """Run ``warmup + repeats`` iterations of one mode; return the per-iteration seconds and peak RSS."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if mode == "train":  # as train.json does
        set_malloc_mmap_threshold(args.malloc_mmap_threshold)
    heap_only = args.malloc_heap_only if args.malloc_heap_only is not None else mode == "infer"
    set_malloc_heap_only(heap_only)  # as train.json (false) and inference.json (true) do by default
    generator, discriminator = SimSIDGenerator(img_size=args.img_size), Discriminator(img_size=args.img_size)
    x = torch.rand(args.batch, 1, args.img_size, args.img_size)
    times = []
    if mode == "train":
        loss_fn = GeneratorLoss()
        optimizer = torch.optim.Adam(
            generator.parameters(), lr=1e-4, betas=(0.5, 0.999), eps=1e-7, weight_decay=1e-5, fused=args.fused_adam
        )
        generator.train()
        discriminator.train()
        for p in discriminator.parameters():
            p.requires_grad_(False)  # the generator step does not update the discriminator
        for _ in range(args.warmup + args.repeats):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with _precision(precision):
                out = generator(x)
                terms = loss_fn(out, x, discriminator(out["recon"]))
            terms["total"].backward()
            optimizer.step()
            generator.write_memory(out["queries"])
            times.append(time.perf_counter() - start)
            if not torch.isfinite(terms["total"]):
                raise RuntimeError(f"non-finite generator loss under {precision}")
            del out, terms  # as a training loop would: nothing from this step outlives it
    else:
        generator.eval()
        discriminator.eval()
        with torch.inference_mode():
            for _ in range(args.warmup + args.repeats):
                start = time.perf_counter()
                with _precision(precision):
                    scores = discriminator(generator(x)["recon"])
                times.append(time.perf_counter() - start)
                if not torch.isfinite(scores).all():
                    raise RuntimeError(f"non-finite scores under {precision}")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"times": times[args.warmup :], "peak_gb": peak_kib * 1024 / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--no-fused-adam", dest="fused_adam", action="store_false", help="for-loop Adam")
    parser.add_argument(
        "--malloc-mmap-threshold", type=int, default=16 * 1024 * 1024,
        help="training: glibc mmap threshold in bytes, as train.json's malloc_mmap_threshold sets it (0: glibc's adaptive "
        "one)",
    )
    parser.add_argument(
        "--malloc-heap-only", nargs="?", const="true", choices=["true", "false"],
        help="every allocation from glibc's heap, never trimmed, as the configs' malloc_heap_only does; default: as "
        "train.json (false) for training, as inference.json (true) for inference",
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(_measure(*args.child, args)))
        return

    generator = SimSIDGenerator(img_size=args.img_size)
    print(f"generator parameters: {sum(p.numel() for p in generator.parameters()) / 1e6:.2f} M")
    print(f"torch {torch.__version__}, threads {args.threads}, batch {args.batch}, {args.img_size}x{args.img_size}, "
          f"malloc from {malloc_library() or 'unknown'}")
    for mode in args.modes:
        for precision in args.precisions:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child", mode, precision]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            times = result["times"]
            print(
                f"{mode:5s} {precision:4s}: min {min(times):.3f} s  median {statistics.median(times):.3f} s"
                f"  (n={len(times)})  peak RSS {result['peak_gb']:.2f} GB"
            )


if __name__ == "__main__":
    main()
