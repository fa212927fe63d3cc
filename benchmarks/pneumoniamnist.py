"""Real radiographs: PneumoniaMNIST (MedMNIST) written as a dataset folder the bundle reads.

PneumoniaMNIST holds the pediatric chest radiographs of Kermany et al. (the "ZhangLab" set the SQUID and
SimSID papers benchmark on), centre-cropped and resized by MedMNIST to 28 x 28 (``pneumoniamnist.npz``) or, in
MedMNIST+, to 64, 128 or 224 (``pneumoniamnist_<size>.npz``); label 0 is normal, 1 pneumonia. Download it
from MedMNIST (https://medmnist.com, CC BY 4.0), then (from the repository root)::

    python -m benchmarks.pneumoniamnist --npz pneumoniamnist.npz --output /data/pneumoniamnist

writes ``<output>/{train,val,test}/{normal,pneumonia}/NNNNN.png`` (8-bit grey, the size stored in the file) and
``<output>/datalist.json``: the training split's normal images for training (its pneumonia images are left
out), the validation and test splits whole, every abnormal item of kind ``pneumonia``. The standard file's test
split is 234 normal + 390 pneumonia images; its training split has 1214 normal images.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger("pneumoniamnist")

SPLITS = {"train": "training", "val": "validation", "test": "test"}
KINDS = ("normal", "pneumonia")


def write_pneumoniamnist(npz: str | Path, output: str | Path) -> dict[str, list[dict]]:
    """Write the images of ``npz`` under ``output`` and return the datalist written to ``output/datalist.json``.

    Args:
        npz: a MedMNIST file with ``{split}_images`` (``N x H x W`` uint8) and ``{split}_labels`` (``N x 1``,
            0 or 1) for ``split`` in train, val, test.
        output: a folder that does not exist or is empty.

    Raises:
        FileExistsError: ``output`` is a non-empty folder (nothing is written, nothing removed).
        ValueError: ``npz`` misses an array, holds colour images or labels other than 0 and 1 (names the array).
    """
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: give a new folder for the PneumoniaMNIST images.")
    with np.load(npz) as arrays:
        data = {split: _split_arrays(arrays, split, npz) for split in SPLITS}
    datalist: dict[str, list[dict]] = {name: [] for name in SPLITS.values()}
    for split, (images, labels) in data.items():
        for kind in KINDS:
            (out / split / kind).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            if split == "train" and label:
                continue
            file = f"{split}/{KINDS[label]}/{i:05d}.png"
            Image.fromarray(image, mode="L").save(out / file)
            datalist[SPLITS[split]].append({"image": file, "label": int(label), "kind": KINDS[label]})
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    for split, name in SPLITS.items():
        labels = [item["label"] for item in datalist[name]]
        logger.info("%s: %d normal, %d pneumonia", split, labels.count(0), labels.count(1))
    return datalist


def _split_arrays(arrays: np.lib.npyio.NpzFile, split: str, npz: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The checked ``(N x H x W uint8 images, N int labels)`` of one split."""
    keys = (f"{split}_images", f"{split}_labels")
    missing = [key for key in keys if key not in arrays.files]
    if missing:
        raise ValueError(f"{npz} has no {missing[0]}: give a MedMNIST PneumoniaMNIST .npz file.")
    images, labels = arrays[keys[0]], arrays[keys[1]].reshape(-1).astype(np.int64)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{npz}: {keys[0]} is {images.dtype} {images.shape}, expected N x H x W uint8 (grey).")
    if len(images) != len(labels) or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{npz}: {keys[1]} must hold one label 0 (normal) or 1 (pneumonia) per image.")
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npz", required=True, help="pneumoniamnist.npz or pneumoniamnist_<size>.npz from MedMNIST")
    parser.add_argument("--output", required=True, help="a new folder for the images and datalist.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_pneumoniamnist(args.npz, args.output)


if __name__ == "__main__":
    main()
