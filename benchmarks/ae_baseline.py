"""Plain convolutional autoencoder baseline: reconstruction-error AUC beside the PCA floor, for any dataset.

A small convolutional autoencoder (stride-2 convolutions 64 -> 8 pixels, a 128-number dense bottleneck, the
mirror-image decoder) is trained on the normal training images at ``--size`` (64) with MSE + SSIM
(``monai.losses.SSIMLoss``) for a fixed wall time (``--minutes``), then scores each test image by the mean
squared error of its reconstruction. Printed, overall and per finding kind: the image AUC with its 95 %
stratified-bootstrap interval, the PCA floor's (80 components, ``benchmarks.pca_floor``) on the same images and
the paired difference AE - PCA (``benchmarks.quality_stats.paired_auc_difference``), the AUC of the mean intensity (a
trivial score no finding should be detectable by); with masks, the pixel AUROC of
``|x - recon|`` against them (all test pixels; per kind: that kind's images and the normals).

Usage (from the repository root)::

    python benchmarks/ae_baseline.py --dataset_dir DIR [--minutes 8] [--threads 2] [--intensity_percentiles 1 99]
        [--json out.json]

``DIR`` is anything the bundle reads (``scripts.data.datalist.find_datalist``). Finding kinds and masks come from a
datalist's ``kind`` and ``mask`` keys (the second synthetic set, ``benchmarks/second_set``) or from the built-in
set's ``findings.csv``; otherwise every abnormal image counts as ``abnormal`` and no pixel AUROC is given.
Images are loaded as the bundle loads them (``scripts.data.transforms.LoadRadiograph``) and resized with anti-aliasing;
with ``--intensity_percentiles LOW HIGH`` each is then scaled as the bundle's preprocessing scales it (the PCA floor
beside it sees the same images).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss
from monai.networks.blocks import Convolution
from PIL import Image
from torch import nn

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path[:0] = [str(BUNDLE), str(BUNDLE.parent)]  # scripts.* and benchmarks.*

from benchmarks.pca_baseline import scaled_loader  # noqa: E402
from benchmarks.pca_floor import pca_scores, to_feature_matrix  # noqa: E402
from benchmarks.quality_stats import paired_auc_difference  # noqa: E402
from scripts.data.datalist import find_datalist  # noqa: E402
from scripts.data.synthetic import read_manifest  # noqa: E402
from scripts.metrics import auc_or_nan, finding_subsets  # noqa: E402

logger = logging.getLogger("ae_baseline")


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder with a dense bottleneck.

    Input and output: ``N x 1 x size x size`` (``size`` divisible by 8), output in ``[0, 1]`` (sigmoid).
    Encoder: three stride-2 convolutions (``channels``) to ``size / 8``, then a linear map to ``latent``
    numbers; the decoder mirrors it with transposed convolutions.
    """

    def __init__(self, size: int = 64, channels: tuple[int, int, int] = (32, 64, 128), latent: int = 128) -> None:
        super().__init__()
        if size % 8:
            raise ValueError(f"size must be divisible by 8, got {size}.")
        self.cells = channels[-1] * (size // 8) ** 2
        self.grid = (channels[-1], size // 8, size // 8)
        layers, c_in = [], 1
        for c in channels:
            layers.append(Convolution(2, c_in, c, strides=2, kernel_size=3, act="LEAKYRELU", norm="BATCH"))
            c_in = c
        self.encoder = nn.Sequential(*layers)
        self.to_latent = nn.Linear(self.cells, latent)
        self.from_latent = nn.Linear(latent, self.cells)
        ups = []
        for c_out in (*channels[::-1][1:], 16):
            ups.append(Convolution(2, c_in, c_out, strides=2, kernel_size=3, act="LEAKYRELU", norm="BATCH",
                                   is_transposed=True))
            c_in = c_out
        self.decoder = nn.Sequential(*ups, nn.Conv2d(c_in, 1, 3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.to_latent(self.encoder(x).flatten(1))
        return self.decoder(self.from_latent(z).view(-1, *self.grid))


def annotate_test_split(dataset_dir: Path, test: list[dict]) -> list[tuple[str, str | None]]:
    """Per test item, ``(finding kind, absolute mask path or None)``: the ``kind``/``mask`` of its datalist item
    (:func:`scripts.data.datalist.find_datalist` keeps them), else the row of a built-in set's ``findings.csv``; without
    either, ``normal``/``abnormal`` by its label and no mask."""
    manifest = {}
    if not any("kind" in item or "mask" in item for item in test) and (Path(dataset_dir) / "findings.csv").is_file():
        manifest = {row["image"]: (row["finding"], row["mask"]) for row in read_manifest(dataset_dir)}
    return [manifest.get(item["image"]) or (item.get("kind") or ("abnormal" if item["label"] else "normal"),
                                             item.get("mask") or None) for item in test]


def load_images(paths: list[str], size: int, percentiles: Sequence[float] | None = None) -> np.ndarray:
    """Load files as the bundle does and resize them with anti-aliasing: ``N x size x size`` float32; with
    ``percentiles``, scaled per image as the bundle's preprocessing scales it."""
    load = scaled_loader(size, percentiles)
    return to_feature_matrix([load(p) for p in paths], size).reshape(-1, size, size).astype(np.float32)


def load_masks(paths: list[str], size: int) -> np.ndarray:
    """Load 8-bit mask PNGs (non-zero = lesion) resized to ``size``: ``N x size x size`` bool (area > 50 %)."""
    arrays = [np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0 for p in paths]
    return to_feature_matrix(arrays, size).reshape(-1, size, size) > 0.5


def train(model: ConvAutoencoder, images: np.ndarray, minutes: float, batch_size: int, seed: int) -> dict:
    """Train on ``images`` (N x S x S) with MSE + SSIM for ``minutes`` of wall time; returns a short log."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(images)[:, None]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    ssim = SSIMLoss(spatial_dims=2, data_range=1.0)
    model.train()
    start, steps, epochs, loss = time.time(), 0, 0, float("nan")
    while time.time() - start < minutes * 60:
        order = rng.permutation(len(data))
        for begin in range(0, len(order) - batch_size + 1, batch_size):
            x = data[order[begin : begin + batch_size]]
            recon = model(x)
            value = F.mse_loss(recon, x) + ssim(recon, x)
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            steps, loss = steps + 1, value.item()
            if time.time() - start >= minutes * 60:
                break
        epochs += 1
        if epochs % 10 == 1:
            logger.info("epoch %d: %d steps, loss %.4f, %.0f s", epochs, steps, loss, time.time() - start)
    seconds = round(time.time() - start, 1)
    return {"steps": steps, "epochs_started": epochs, "final_loss": loss, "train_seconds": seconds}


@torch.no_grad()
def reconstruct(model: ConvAutoencoder, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Reconstructions (N x S x S) of ``images`` in eval mode."""
    model.eval()
    data = torch.from_numpy(images)[:, None]
    return torch.cat([model(data[i : i + batch_size]) for i in range(0, len(data), batch_size)])[:, 0].numpy()


def cpu_line() -> str:
    """``lscpu``'s model name and the vector/matrix flags that matter for throughput."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu unavailable"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")]
    return f"{fields.get('Model name', '?').strip()}; flags: {' '.join(wanted)}"


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    splits = find_datalist(args.dataset_dir)
    test = splits["test"]
    kinds, mask_paths = map(list, zip(*annotate_test_split(args.dataset_dir, test)))
    labels = np.array([item["label"] for item in test])
    train_images = load_images([item["image"] for item in splits["training"]], args.size, args.intensity_percentiles)
    test_images = load_images([item["image"] for item in test], args.size, args.intensity_percentiles)
    model = ConvAutoencoder(args.size)
    log = train(model, train_images, args.minutes, args.batch_size, args.seed)
    residual = np.abs(test_images - reconstruct(model, test_images))
    ae = (residual**2).mean(axis=(1, 2))
    pca = pca_scores(train_images, test_images)
    brightness = test_images.mean(axis=(1, 2))
    image_auc = {}
    for kind, (keep, y) in finding_subsets(labels, kinds).items():
        paired = paired_auc_difference(ae[keep], pca[keep], y, seed=args.seed)
        image_auc[kind] = {
            "ae": auc_or_nan(ae[keep], y), "ae_95": paired["interval_a"],
            "pca": auc_or_nan(pca[keep], y), "pca_95": paired["interval_b"],
            "ae_minus_pca": paired["difference"], "ae_minus_pca_95": (paired["low"], paired["high"]),
            "mean_intensity": auc_or_nan(brightness[keep], y),
            "n": int(keep.sum()),
        }
    result = {
        "dataset_dir": str(args.dataset_dir), "size": args.size, "minutes": args.minutes, "threads": args.threads,
        "intensity_percentiles": args.intensity_percentiles, "cpu": cpu_line(), "n_train": len(train_images), **log,
        "image_auc": image_auc,
        "per_image": [{"image": item["image"], "label": int(item["label"]), "kind": kind, "ae": float(a), "pca": float(b)}
                      for item, kind, a, b in zip(test, kinds, ae, pca)],
    }
    if any(mask_paths):
        masks = np.zeros_like(test_images, dtype=bool)
        abnormal_masked = [p for p, y in zip(mask_paths, labels) if y == 1 and p]
        if len(abnormal_masked) < int(labels.sum()):
            logger.warning("%d abnormal test images have no mask; pixel AUROC counts them as empty.",
                           int(labels.sum()) - len(abnormal_masked))
        present = [i for i, p in enumerate(mask_paths) if p]
        masks[present] = load_masks([mask_paths[i] for i in present], args.size)
        pixel = {}
        for kind, (keep, _) in finding_subsets(labels, kinds).items():
            pixel[kind] = auc_or_nan(residual[keep].ravel(), masks[keep].ravel().astype(int))
        result["pixel_auroc"] = pixel
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", type=Path, required=True, help="dataset folder or datalist the bundle reads")
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall time")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--intensity_percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="scale each image's LOW-HIGH percentiles to [0, 1] as the bundle does "
                        "(default: as loaded)")
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file, with each test image's "
                        "scores under 'per_image' (for paired comparisons with the bundle's scores.csv)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(args)
    print(f"CPU: {result['cpu']}")
    print(f"AE {args.size}x{args.size}, {result['train_seconds']:.0f} s, {result['steps']} steps; test AUC [95 %]:")
    for kind, r in result["image_auc"].items():
        print(f"  {kind:14s} AE {r['ae']:.3f} [{r['ae_95'][0]:.3f}, {r['ae_95'][1]:.3f}]  "
              f"PCA {r['pca']:.3f} [{r['pca_95'][0]:.3f}, {r['pca_95'][1]:.3f}]  "
              f"AE-PCA {r['ae_minus_pca']:+.3f} [{r['ae_minus_pca_95'][0]:+.3f}, {r['ae_minus_pca_95'][1]:+.3f}]  "
              f"mean intensity {r['mean_intensity']:.3f}")
    for kind, value in result.get("pixel_auroc", {}).items():
        print(f"  pixel AUROC {kind:14s} {value:.3f}")
    print(json.dumps({key: value for key, value in result.items() if key != "per_image"}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
