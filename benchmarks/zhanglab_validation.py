"""A datalist for the Kaggle download of the ZhangLab radiographs with a validation split drawn from ``train``.

The Kaggle "Chest X-Ray Images (Pneumonia)" folder (``<root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``; the
pediatric radiographs of Kermany et al. that the SQUID and SimSID papers benchmark on) is read by the bundle as it
is, but its ``val`` folder holds 8 + 8 images, and without it the bundle validates on the test split. Training
keeps the best epoch by validation AUC, so either way the test figure is not independent of model selection. This
writes a datalist (paths absolute) whose validation split is ``val_normal`` normal and ``val_abnormal`` pneumonia
images drawn at random from ``train`` (the normal ones then left out of training), plus ``val`` if present; the test
split is ``test`` whole, every pneumonia item of kind ``pneumonia``. From the repository root::

    python -m benchmarks.zhanglab_validation --root /data/chest_xray --output /data/chest_xray_datalist.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path[:0] = [str(BUNDLE)]  # scripts.*

from scripts.data.datalist import KAGGLE_LAYOUT, list_images  # noqa: E402

logger = logging.getLogger("zhanglab_validation")

KINDS = ("normal", "pneumonia")


def _items(root: Path, split: str) -> list[dict]:
    """The images of ``root/split/{NORMAL,PNEUMONIA}`` as sorted datalist items (empty if the split is missing)."""
    folders = (KAGGLE_LAYOUT.normal, KAGGLE_LAYOUT.abnormal)
    return [{"image": image, "label": label, "kind": KINDS[label]}
            for label, folder in enumerate(folders) for image in list_images(root / split / folder)]


def zhanglab_datalist(root: str | Path, val_normal: int = 100, val_abnormal: int = 100,
                      seed: int = 0) -> dict[str, list[dict]]:
    """The datalist of the Kaggle folder ``root`` with the validation split described in the module docstring.

    Raises:
        ValueError: ``root/train`` holds fewer normal or pneumonia images than asked for (more than half of the
            normal ones may not be taken), or ``root/test`` holds no images; the message names the folder.
    """
    root = Path(root)
    train, test = _items(root, "train"), _items(root, "test")
    normal = [item for item in train if item["label"] == 0]
    abnormal = [item for item in train if item["label"] == 1]
    if val_normal > len(normal) // 2 or val_abnormal > len(abnormal):
        raise ValueError(f"{root / 'train'} holds {len(normal)} NORMAL and {len(abnormal)} PNEUMONIA images: too few "
                         f"to draw {val_normal} + {val_abnormal} for validation (at most half of the normal ones).")
    if not test:
        raise ValueError(f"{root / 'test'} holds no NORMAL or PNEUMONIA images: point --root at the folder that "
                         "holds train/ and test/.")
    rng = np.random.default_rng(seed)
    held_out = set(rng.choice(len(normal), val_normal, replace=False).tolist())
    drawn = sorted(rng.choice(len(abnormal), val_abnormal, replace=False).tolist())
    return {
        "training": [{"image": item["image"]} for i, item in enumerate(normal) if i not in held_out],
        "validation": [normal[i] for i in sorted(held_out)] + [abnormal[i] for i in drawn] + _items(root, "val"),
        "test": test,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the Kaggle chest_xray folder holding train/ and test/")
    parser.add_argument("--output", required=True, help="datalist JSON to write (refused if it exists)")
    parser.add_argument("--val_normal", type=int, default=100)
    parser.add_argument("--val_abnormal", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output = Path(args.output)
    if output.exists():
        raise SystemExit(f"{output} exists: give a new file for the datalist.")
    datalist = zhanglab_datalist(args.root, args.val_normal, args.val_abnormal, args.seed)
    output.write_text(json.dumps(datalist, indent=1))
    logger.info("Wrote %s (%s)", output, ", ".join(f"{k}: {len(v)}" for k, v in datalist.items()))


if __name__ == "__main__":
    main()
