"""How much of a lesion does the generator reproduce? Per finding kind, on phantom pairs of the built-in generator.

Each pair is one phantom patient rendered with and without a finding (``scripts.data.phantom``), so the lesion's own
signal is ``L = x_abnormal - x_normal`` exactly. With ``R = G(x_abnormal) - G(x_normal)`` the reconstruction's
change, the **copied fraction** ``<R, L> / <L, L>`` over the lesion mask is 1 when the generator reproduces the lesion
and 0 when it removes it (a model that copies a lesion cannot score it, whatever the pooling). Also printed per kind:
the mean residual ``|x - G(x)|`` inside the mask over its mean outside the mask (the map's contrast), and the same
for the per-pixel z-score the reconstruction score is built from.

Usage (from the repository root)::

    python benchmarks/lesion_copy.py --model bundle/models/model.pt [--pairs 20] [--seed 123] [--json out.json] \
        [--overrides '{"ops": ["none", "none", "none", "none"]}']

The network is built with ``inference.json``'s settings at the model file's ``img_size``; images are prepared as the
bundle prepares a PNG (8-bit, then area-resized to ``img_size``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bundle"))

from monai.bundle import ConfigParser  # noqa: E402
from scripts.checkpoint import load_checkpoint, trained_img_size  # noqa: E402
from scripts.data.phantom import FINDINGS, render_radiograph, sample_finding, sample_patient  # noqa: E402


def build_detector(model: Path, overrides: dict) -> torch.nn.Module:
    """``inference.json``'s detector at the model's ``img_size`` (and ``overrides``, the network settings the model was
    trained with where they are not the defaults), with the model's weights, in eval mode."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle" / "configs" / "inference.json"))
    parser.update({"ckpt_path": str(model), "img_size": trained_img_size(model, default=128), **overrides})
    detector = parser.get_parsed_content("network_def")
    detector.load_state_dict(load_checkpoint(model))
    return detector.eval()


def prepared(image: np.ndarray, size: int) -> torch.Tensor:
    """A [0, 1] image as the bundle loads its 8-bit PNG and resizes it: ``1 x 1 x size x size``."""
    x = torch.from_numpy(np.rint(image * 255) / 255).float()[None, None]
    return F.interpolate(x, size=(size, size), mode="area")


def pair_measures(detector: torch.nn.Module, rng: np.random.Generator, kind: str, size: int) -> dict[str, float]:
    """The copied fraction and the residual contrasts of one phantom pair of ``kind``."""
    patient = sample_patient(rng)
    abnormal, mask = render_radiograph(patient, 256, sample_finding(rng, patient, kind))
    normal, _ = render_radiograph(patient, 256)
    x = torch.cat([prepared(abnormal, size), prepared(normal, size)])
    inside = (F.interpolate(torch.from_numpy(mask).float()[None, None], size=(size, size), mode="area") >= 0.5)[0, 0]
    with torch.no_grad():
        raw = detector.raw_scores(x)
        z = detector.statistics.standardise(raw["residual"]).abs()
    lesion = (x[0, 0] - x[1, 0])[inside]
    change = (raw["recon"][0, 0] - raw["recon"][1, 0])[inside]
    residual = (x[0, 0] - raw["recon"][0, 0]).abs()  # |x - G(x)|, whatever map the detector writes
    return {
        "copied_fraction": float((change * lesion).sum() / (lesion * lesion).sum().clamp_min(1e-12)),
        "residual_contrast": float(residual[inside].mean() / residual[~inside].mean().clamp_min(1e-12)),
        "z_contrast": float(z[0, 0][inside].mean() / z[0, 0][~inside].mean().clamp_min(1e-12)),
        "lesion_rms": float(lesion.square().mean().sqrt()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model.pt written by training")
    parser.add_argument("--pairs", type=int, default=20, help="phantom pairs per finding kind")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--overrides", type=json.loads, default={},
                        help="network settings of the model as JSON, e.g. '{\"ops\": [\"none\", \"concat\", ...]}'")
    args = parser.parse_args()
    torch.set_num_threads(2)
    detector = build_detector(args.model, args.overrides)
    size = int(detector.statistics.pixel_mean.shape[-1])
    rng = np.random.default_rng(args.seed)
    summary: dict[str, dict[str, float]] = {}
    for kind in FINDINGS:
        rows = [pair_measures(detector, rng, kind, size) for _ in range(args.pairs)]
        summary[kind] = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_line = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "")
    print(f"model {args.model} (img_size {size}), {args.pairs} pairs per kind, medians; "
          f"{platform.machine()} {model_line}")
    print(f"{'kind':15s} {'copied':>8s} {'|x-G(x)| in/out':>16s} {'|z| in/out':>11s} {'lesion rms':>11s}")
    for kind, m in summary.items():
        print(f"{kind:15s} {m['copied_fraction']:8.2f} {m['residual_contrast']:16.2f} {m['z_contrast']:11.2f} "
              f"{m['lesion_rms']:11.3f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
