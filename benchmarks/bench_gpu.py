"""Training throughput and peak memory of the bundle's trainer on one GPU: 128 and 256 pixels, fp32 and AMP,
the generator's plain and fused training paths.

Each measurement runs the real :class:`scripts.engines.SimSIDTrainer` (discriminator step every iteration,
generator step with the memory-queue write every ``n_critic``), built from ``bundle/configs/train.json`` with
its reference settings, on random batches, in a fresh subprocess (so the peak memory is its own). Reported:
training images per second over the timed iterations (after ``--warmup``), the peak GPU memory allocated and
reserved by PyTorch (the peak resident set size on the CPU).

The generator's blocks train through the plain PyTorch modules or through fused memory-lean autograd
functions; the bundle picks the fused ones on the CPU only (``bundle/docs/compute_paths.md``). ``--paths``
forces either on the measured device, so one run gives both (``plain`` is the bundle's choice on a GPU,
``fused`` on the CPU).

Usage (repository root)::

    python benchmarks/bench_gpu.py                      # on a GPU machine: the full table, both paths
    python benchmarks/bench_gpu.py --sizes 128 --channels-last off   # shorter: 128 pixels, both precisions and paths
    python benchmarks/bench_gpu.py --device cpu --tiny --sizes 64 --batch 2 --iterations 2 --warmup 2  # CPU check

``--tiny`` shrinks the model widths and memories (not the image sizes) so the script can be checked anywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path.insert(0, str(BUNDLE))

from ignite.engine import Events  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

import scripts.blocks  # noqa: E402
from scripts.distributed import configure_backends  # noqa: E402
from scripts.engines import SimSIDTrainer  # noqa: E402

TINY = {
    "features_root": 8,
    "num_slots": 12,
    "shrink_thres": 3,
    "mem_num_slots": 12,
    "inpaint_channels": 16,
    "num_heads": 2,
}


def _build(args: argparse.Namespace, img_size: int, amp: bool, channels_last: bool) -> tuple[SimSIDTrainer, list]:
    """The bundle's trainer from ``train.json`` (reference settings, or ``TINY``) on random batches."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({
        **(TINY if args.tiny else {}),
        "bundle_root": str(BUNDLE),
        "img_size": img_size,
        "batch_size": args.batch,
        "device": args.device,
        "amp": amp,
        "channels_last": channels_last,
        "generator": "$scripts.distributed.prepare_module(@network_def, @device, @channels_last)",
        "discriminator": "$scripts.distributed.prepare_module(@discriminator_def, @device, @channels_last)",
    })
    n_batches = args.warmup + args.iterations
    batch = {"image": torch.rand(args.batch, 1, img_size, img_size)}
    trainer = SimSIDTrainer(
        device=torch.device(args.device),
        max_epochs=1,
        train_data_loader=[batch] * n_batches,
        epoch_length=n_batches,
        generator=parser.get_parsed_content("generator"),
        discriminator=parser.get_parsed_content("discriminator"),
        g_optimizer=parser.get_parsed_content("g_optimizer"),
        d_optimizer=parser.get_parsed_content("d_optimizer"),
        g_loss_function=parser.get_parsed_content("g_loss"),
        d_loss_function=parser.get_parsed_content("d_loss"),
        n_critic=parser.get_parsed_content("n_critic"),
        amp=amp,
    )
    return trainer, parser.get_parsed_content("generator")


def _force_training_path(path: str, device: torch.device) -> None:
    """Make the generator's blocks train through the ``"plain"`` modules or the ``"fused"`` functions on ``device``.

    Sets the device types on which :func:`scripts.blocks._lean_training` chooses the fused functions, so its
    other conditions (training mode, autograd, plain ``Conv2d``/``BatchNorm2d`` layers) still apply.
    """
    scripts.blocks._FUSED_DEVICE_TYPES = frozenset({device.type} if path == "fused" else ())


def _device_name(device: torch.device) -> str:
    """The GPU's name, or ``"CPU"``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def _measure(args: argparse.Namespace, img_size: int, precision: str, channels_last: bool, path: str) -> dict:
    """One measurement: ``warmup`` untimed then ``iterations`` timed training iterations on training ``path``."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    _force_training_path(path, device)
    configure_backends(cudnn_benchmark=args.cudnn_benchmark == "on")
    trainer, generator = _build(args, img_size, precision == "amp", channels_last)
    clock: dict[str, float] = {}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _check_and_time(engine: SimSIDTrainer) -> None:
        losses = [v for k, v in engine.state.output.items() if k.startswith("loss_")]
        if not all(math.isfinite(v) for v in losses):
            raise RuntimeError(f"non-finite loss at iteration {engine.state.iteration} under {precision}")
        if engine.state.iteration == args.warmup:
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            clock["start"] = time.perf_counter()

    @trainer.on(Events.EPOCH_COMPLETED)
    def _stop(engine: SimSIDTrainer) -> None:
        sync()
        clock["stop"] = time.perf_counter()

    trainer.run()
    seconds = clock["stop"] - clock["start"]
    amp_dtype = "bf16" if not cuda or torch.cuda.is_bf16_supported() else "fp16+scaler"
    result = {
        "device": _device_name(device),
        "training_path": path,
        "img_size": img_size,
        "precision": precision if precision == "fp32" else f"amp ({amp_dtype})",
        "channels_last": channels_last,
        "batch": args.batch,
        "generator_params_m": sum(p.numel() for p in generator.parameters()) / 1e6,
        "images_per_s": args.batch * args.iterations / seconds,
        "ms_per_iteration": 1000 * seconds / args.iterations,
    }
    if cuda:
        result["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
    else:
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return result


def _row(r: dict) -> str:
    """One markdown table row; memory: GPU peak allocated and reserved, or the CPU peak RSS and ``-``."""
    memory = (f"{r['peak_allocated_gb']:6.2f} | {r['peak_reserved_gb']:6.2f}" if "peak_allocated_gb" in r
              else f"{r['peak_rss_gb']:6.2f} | -")
    return (f"| {r['training_path']} | {r['img_size']} | {r['precision']} | {'yes' if r['channels_last'] else 'no'} | "
            f"{r['batch']} | {r['images_per_s']:.1f} | {r['ms_per_iteration']:.1f} | {memory} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "amp"], choices=["fp32", "amp"])
    parser.add_argument("--channels-last", default="both", choices=["off", "on", "both"])
    parser.add_argument("--cudnn-benchmark", default="on", choices=["off", "on"])
    parser.add_argument("--paths", nargs="+", default=["plain", "fused"], choices=["plain", "fused"],
                        help="generator training paths to time (default: both)")
    parser.add_argument("--batch", type=int, default=16, help="images per iteration (reference: 16)")
    parser.add_argument("--warmup", type=int, default=6, help="untimed iterations first (a multiple of n_critic)")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations (a multiple of n_critic)")
    parser.add_argument("--tiny", action="store_true", help="small widths and memories, for a quick check")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU runs; default: PyTorch's)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--child", nargs=4, metavar=("SIZE", "PRECISION", "CHANNELS_LAST", "PATH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup % 2 or args.iterations % 2 or args.iterations < 2:
        parser.error("--warmup and --iterations must be even (a generator step every n_critic=2 iterations)")

    if args.child:
        size, precision, channels_last, path = args.child
        print(json.dumps(_measure(args, int(size), precision, channels_last == "1", path)))
        return

    layouts = {"off": [False], "on": [True], "both": [False, True]}[args.channels_last]
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {_device_name(device)}, cudnn.benchmark {args.cudnn_benchmark}, "
          f"{'TINY model' if args.tiny else 'reference model'}, {args.iterations} timed iterations")
    memory = "peak allocated GB | peak reserved GB" if device.type == "cuda" else "peak RSS GB | -"
    print(f"| training path | size | precision | channels-last | batch | images/s | ms/iteration | {memory} |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for size in args.sizes:
        for precision in args.precisions:
            for channels_last in layouts:
                for path in args.paths:
                    cmd = [sys.executable, __file__, *sys.argv[1:],
                           "--child", str(size), precision, str(int(channels_last)), path]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
                        layout = "yes" if channels_last else "no"
                        print(f"| {path} | {size} | {precision} | {layout} | failed: {reason} |", flush=True)
                        continue
                    results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(_row(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
