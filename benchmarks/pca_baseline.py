"""PCA floor: AUC of the PCA reconstruction error (80 components at 64 x 64), overall and per finding kind.

Usage (from the repository root)::

    python benchmarks/pca_baseline.py [--dataset_dir DIR] [--json out.json] [--n_components 80] [--size 64]

Without ``--dataset_dir`` the default synthetic set (``scripts.data.synthetic``, ``--seed``) is written to a
temporary folder first.  PCA is fitted on the training normals and scores the test split.  Finding kinds come
from the synthetic set's ``findings.csv``; for other datasets every abnormal image counts as ``abnormal``.
Images are loaded as the bundle loads them (``scripts.data.transforms.LoadRadiograph``: 8-bit PNG/JPEG scaled by 1/255,
DICOM through its display pipeline).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

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


def run(dataset_dir: Path, n_components: int, size: int) -> dict:
    splits = find_datalist(dataset_dir)
    kinds = finding_kinds(dataset_dir) if dataset_dir.is_dir() else {}
    test = splits["test"]
    start = time.time()
    load = LoadRadiograph()
    train_images = [load(item["image"])[0].numpy() for item in splits["training"]]
    test_images = [load(item["image"])[0].numpy() for item in test]
    labels = [item["label"] for item in test]
    test_kinds = [kinds.get(item["image"], "abnormal" if item["label"] else "normal") for item in test]
    auc = pca_auc_by_finding(train_images, test_images, labels, test_kinds, n_components=n_components, size=size)
    return {
        "dataset_dir": str(dataset_dir),
        "n_train": len(train_images),
        "n_test_normal": labels.count(0),
        "n_test_abnormal": labels.count(1),
        "n_components": n_components,
        "size": size,
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        dataset_dir = args.dataset_dir or write_synthetic_dataset(Path(tmp) / "synthetic", seed=args.seed)
        result = run(dataset_dir, args.n_components, args.size)
    if args.dataset_dir is None:
        result["dataset_dir"] = f"synthetic (seed {args.seed}, default counts)"
    print(f"PCA floor ({args.n_components} components at {args.size}x{args.size}), test AUC:")
    for kind, value in result["auc"].items():
        print(f"  {kind:14s} {value:.3f}")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
