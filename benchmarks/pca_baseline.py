"""PCA floor: AUC of the PCA reconstruction error (80 components at 64 x 64), overall and per finding kind.

Usage (from the repository root)::

    python benchmarks/pca_baseline.py [--dataset_dir DIR] [--json out.json] [--n_components 80] [--size 64]
        [--intensity_percentiles 1 99]

Without ``--dataset_dir`` the default synthetic set (``scripts.data.synthetic``, ``--seed``) is written to a
temporary folder first.  PCA is fitted on the training normals and scores the test split.  Finding kinds come
from the synthetic set's ``findings.csv``, else from the datalist's ``kind`` key; without either every abnormal image
counts as ``abnormal``.
Images are loaded as the bundle loads them (``scripts.data.transforms.LoadRadiograph``: 8-bit PNG/JPEG scaled by 1/255,
DICOM through its display pipeline). With ``--intensity_percentiles LOW HIGH`` each image is first resized to
``size x size`` (area) and its intensities scaled as the bundle's preprocessing scales them (the percentiles to
[0, 1], clipped), so the floor sees what the model sees.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from monai.transforms import Compose, Resize, ScaleIntensityRangePercentiles

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path[:0] = [str(BUNDLE), str(BUNDLE.parent)]  # scripts.* and benchmarks.*

from scripts.data.datalist import find_datalist  # noqa: E402
from scripts.data.transforms import LoadRadiograph  # noqa: E402
from benchmarks.pca_floor import pca_auc_by_finding  # noqa: E402
from scripts.data.synthetic import read_manifest, write_synthetic_dataset  # noqa: E402

logger = logging.getLogger("pca_baseline")


def finding_kinds(dataset_dir: Path) -> dict[str, str]:
    """Finding kind per absolute image path from the synthetic manifest (empty if there is none)."""
    if not (dataset_dir / "findings.csv").is_file():
        return {}
    return {row["image"]: row["finding"] for row in read_manifest(dataset_dir)}


def scaled_loader(size: int, percentiles: Sequence[float] | None) -> Callable[[str], np.ndarray]:
    """Path -> ``H x W`` image as the bundle loads it; with ``percentiles``, resized to ``size`` (area) and scaled
    as the bundle's preprocessing scales it."""
    load = LoadRadiograph()
    if percentiles is None:
        return lambda path: load(path)[0].numpy()
    low, high = percentiles
    steps = Compose([Resize((size, size), mode="area"), ScaleIntensityRangePercentiles(low, high, 0.0, 1.0, clip=True)])
    return lambda path: np.asarray(steps(load(path)))[0]


def run(dataset_dir: Path, n_components: int, size: int, percentiles: Sequence[float] | None = None) -> dict:
    splits = find_datalist(dataset_dir)
    kinds = finding_kinds(dataset_dir) if dataset_dir.is_dir() else {}
    test = splits["test"]
    start = time.time()
    load = scaled_loader(size, percentiles)
    train_images = [load(item["image"]) for item in splits["training"]]
    test_images = [load(item["image"]) for item in test]
    labels = [item["label"] for item in test]
    test_kinds = [kinds.get(item["image"], item.get("kind") or ("abnormal" if item["label"] else "normal")) for item in test]
    auc = pca_auc_by_finding(train_images, test_images, labels, test_kinds, n_components=n_components, size=size)
    return {
        "dataset_dir": str(dataset_dir),
        "n_train": len(train_images),
        "n_test_normal": labels.count(0),
        "n_test_abnormal": labels.count(1),
        "n_components": n_components,
        "size": size,
        "intensity_percentiles": None if percentiles is None else list(percentiles),
        "auc": auc,
        "seconds": round(time.time() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", type=Path, help="dataset folder or datalist (default: fresh synthetic set)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic set when no --dataset_dir")
    parser.add_argument("--n_components", type=int, default=80)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file")
    parser.add_argument("--intensity_percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="scale each image as the bundle does (its default: 1 99); default: images as loaded")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = args.dataset_dir or write_synthetic_dataset(Path(tmp) / "synthetic", seed=args.seed)
        result = run(dataset_dir, args.n_components, args.size, args.intensity_percentiles)
    if args.dataset_dir is None:
        result["dataset_dir"] = f"synthetic (seed {args.seed}, default counts)"
    scaling = "as loaded" if args.intensity_percentiles is None else "percentiles %g-%g" % tuple(args.intensity_percentiles)
    print(f"PCA floor ({args.n_components} components at {args.size}x{args.size}, images {scaling}), test AUC:")
    for kind, value in result["auc"].items():
        print(f"  {kind:14s} {value:.3f}")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
