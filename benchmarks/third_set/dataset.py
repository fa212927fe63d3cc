"""Write the third synthetic set, in the second set's layout and datalist contract.

Layout under ``root``::

    train/normal_256/normal_NNNN.{png,dcm}               n_train normals
    {val,test}/{normal_256,pneumonia_256}/*.{png,dcm}    normals and abnormals
    masks/<split>/abnormal_NNNN.png                      mask of each abnormal image (0 / 255)
    datalist.json                                        {"training", "validation", "test"}: image, label, kind, mask
    findings.csv                                         split,file,label,finding
    contact_sheet.png                                    test normals and each kind with its mask outline
    .third_set.json                                      parameters and image count; written last

Normal items carry no ``mask``. Abnormal images of a split cycle through :data:`~.findings.KINDS`. Image ``i``
of a split comes from ``numpy.random.default_rng([seed, 3, split, i, abnormal])`` and its file format from
``[seed, 3, split, i, abnormal, 1]``, so an image depends neither on the counts nor on its file format.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_erosion

from benchmarks.second_set.files import sample_dicom_style, save_dicom, save_png

from .acquisition import sample_acquisition
from .anatomy import sample_anatomy
from .findings import KINDS, sample_finding
from .render import render

__all__ = ["GENERATOR_VERSION", "STREAM", "draw_case", "draw_image", "write_third_set", "save_contact_sheet"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
STREAM = 3  # the built-in set and the second set use other streams
MARKER = ".third_set.json"
SPLITS = (("train", "training", 0), ("val", "validation", 1), ("test", "test", 2))
_OWNED = ("train", "val", "test", "masks", "datalist.json", "findings.csv", "contact_sheet.png", MARKER)


def draw_case(seed: int, split: str, index: int, kind: str | None) -> tuple:
    """``(anatomy, acquisition, finding)`` of image ``index`` of ``split`` (finding None for a normal image)."""
    code = {name: c for name, _, c in SPLITS}[split]
    rng = np.random.default_rng([seed, STREAM, code, index, int(kind is not None)])
    anatomy = sample_anatomy(rng)
    acquisition = sample_acquisition(rng)
    return anatomy, acquisition, None if kind is None else sample_finding(rng, anatomy, kind)


def draw_image(seed: int, split: str, index: int, kind: str | None, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` of image ``index`` of ``split``: ``size x size`` float32 in [0, 1] (bright = dense) and
    bool (empty for a normal image)."""
    anatomy, acquisition, finding = draw_case(seed, split, index, kind)
    return render(anatomy, acquisition, size, finding)


def save_contact_sheet(rows: list[list[tuple[np.ndarray, np.ndarray]]], path: Path) -> None:
    """RGB grid of ``(image, mask)`` tiles, one row per label, mask borders drawn in red."""
    size = rows[0][0][0].shape[0]
    columns = max(map(len, rows))
    canvas = np.zeros((len(rows), size, columns, size, 3), np.float32)
    for r, row in enumerate(rows):
        for c, (image, mask) in enumerate(row):
            canvas[r, :, c] = image[:, :, None]
            canvas[r, :, c][mask & ~binary_erosion(mask)] = (1.0, 0.2, 0.1)
    Image.fromarray(np.round(canvas.reshape(len(rows) * size, columns * size, 3) * 255).astype(np.uint8)).save(path)


def _store(image: np.ndarray, folder: Path, stem: str, seed: int, split_code: int, index: int, abnormal: bool,
           dicom_fraction: float, key: str) -> Path:
    """Write one image as DICOM (a ``dicom_fraction`` of images, drawn per image) or PNG; return its path."""
    fmt = np.random.default_rng([seed, STREAM, split_code, index, int(abnormal), 1])
    folder.mkdir(parents=True, exist_ok=True)
    if fmt.uniform() < dicom_fraction:
        path = folder / f"{stem}.dcm"
        save_dicom(image, path, sample_dicom_style(fmt), key=key)
    else:
        path = folder / f"{stem}.png"
        save_png(image, path)
    return path


def write_third_set(
    root: str | Path,
    seed: int = 0,
    n_train: int = 800,
    n_val_normal: int = 50,
    n_val_abnormal: int = 50,
    n_test_normal: int = 150,
    n_test_abnormal: int = 150,
    size: int = 256,
    dicom_fraction: float = 0.3,
    sheet_columns: int = 6,
) -> Path:
    """Write the set under ``root`` (see the module docstring) and return ``root``.

    A non-empty folder holding no earlier third set is refused (nothing foreign is deleted); an earlier third
    set there is replaced.
    """
    root = Path(root)
    if root.is_dir() and any(root.iterdir()) and not ((root / MARKER).exists() or (root / "datalist.json").exists()):
        raise FileExistsError(f"{root} is not empty and holds no third synthetic set; choose an empty or new folder.")
    if not 0.0 <= dicom_fraction <= 1.0:
        raise ValueError(f"dicom_fraction must be in [0, 1], got {dicom_fraction}.")
    params = dict(seed=seed, n_train=n_train, n_val_normal=n_val_normal, n_val_abnormal=n_val_abnormal,
                  n_test_normal=n_test_normal, n_test_abnormal=n_test_abnormal, size=size,
                  dicom_fraction=dicom_fraction, version=GENERATOR_VERSION)
    root.mkdir(parents=True, exist_ok=True)
    for name in _OWNED:
        old = root / name
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)
    counts = {"train": (n_train, 0), "val": (n_val_normal, n_val_abnormal), "test": (n_test_normal, n_test_abnormal)}
    datalist: dict[str, list[dict]] = {}
    rows: list[tuple[str, str, int, str]] = []
    sheet: dict[str, list] = {label: [] for label in ("normal", *KINDS)}
    logger.info("Writing %d images (%dx%d) of the third synthetic set to %s", sum(map(sum, counts.values())),
                size, size, root)
    for split, datalist_name, code in SPLITS:
        n_normal, n_abnormal = counts[split]
        items = datalist.setdefault(datalist_name, [])
        cases = [(i, None) for i in range(n_normal)] + [(i, KINDS[i % len(KINDS)]) for i in range(n_abnormal)]
        for index, kind in cases:
            abnormal = kind is not None
            image, mask = draw_image(seed, split, index, kind, size)
            stem = ("abnormal" if abnormal else "normal") + f"_{index:04d}"
            folder = root / split / ("pneumonia_256" if abnormal else "normal_256")
            path = _store(image, folder, stem, seed, code, index, abnormal, dicom_fraction,
                          key=f"third_set/{seed}/{split}/{stem}")
            label = kind or "normal"
            item = {"image": path.relative_to(root).as_posix(), "label": int(abnormal), "kind": label}
            if abnormal:
                (root / "masks" / split).mkdir(parents=True, exist_ok=True)
                item["mask"] = f"masks/{split}/{stem}.png"
                save_png(mask, root / item["mask"])
            items.append(item)
            rows.append((split, item["image"], int(abnormal), label))
            if split == "test" and len(sheet[label]) < sheet_columns:
                sheet[label].append((image, mask))
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    with open(root / "findings.csv", "w", newline="") as f:
        csv.writer(f).writerows([("split", "file", "label", "finding"), *rows])
    if any(sheet.values()):
        save_contact_sheet([tiles for tiles in sheet.values() if tiles], root / "contact_sheet.png")
    (root / MARKER).write_text(json.dumps({"params": params, "n_images": len(rows)}))
    logger.info("Third synthetic set complete: %s", root)
    return root
