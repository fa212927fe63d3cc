"""Write the second synthetic set: ZhangLab folders, a MONAI datalist with masks and kinds, a manifest.

Layout under ``root``::

    train/normal_256/normal_NNNN.{png,dcm}               n_train normals
    {val,test}/{normal_256,pneumonia_256}/*.{png,dcm}    normals and abnormals
    masks/<split>/abnormal_NNNN.png                      mask of each abnormal image (0 / 255)
    datalist.json                                        {"training", "validation", "test"}: image, label, kind, mask
    findings.csv                                         split,file,label,finding (as the built-in set's)
    contact_sheet.png                                    test normals and each kind with its mask outline
    .second_set.json                                     parameters and image count; written last

Normal items have no ``mask`` key (their mask is empty; a constant file would be refused by the bundle's reader).
Abnormal images of a split cycle through :data:`~.findings.KINDS`. Image ``i`` of a split is drawn from
``numpy.random.default_rng([seed, 2, split, i, abnormal])`` and its file format from a second stream, so an
image does not depend on the counts nor on whether it is stored as PNG or DICOM.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .anatomy import sample_anatomy
from .files import sample_dicom_style, save_dicom, save_png
from .findings import KINDS, sample_finding
from .render import render, sample_acquisition

__all__ = ["GENERATOR_VERSION", "draw_image", "write_second_set", "contact_sheet"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
_MARKER = ".second_set.json"
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_DATALIST_SPLITS = {"train": "training", "val": "validation", "test": "test"}
_MANAGED = ("train", "val", "test", "masks", "datalist.json", "findings.csv", "contact_sheet.png", _MARKER)
_STREAM = 2  # keeps these seeds apart from any other generator's


def draw_image(seed: int, split: str, index: int, kind: str | None, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split`` (a normal one when ``kind`` is None): ``(image, mask)``, each ``size x size``,
    image float32 in [0, 1] (bright = dense), mask bool (empty for a normal image)."""
    rng = np.random.default_rng([seed, _STREAM, _SPLIT_CODES[split], index, int(kind is not None)])
    anatomy = sample_anatomy(rng)
    acquisition = sample_acquisition(rng)
    finding = None if kind is None else sample_finding(rng, anatomy, kind)
    return render(anatomy, acquisition, size, finding)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The border pixels of a boolean mask."""
    inner = mask.copy()
    for axis in (0, 1):
        for shift in (1, -1):
            inner &= np.roll(mask, shift, axis)
    return mask & ~inner


def contact_sheet(rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]], path: Path) -> None:
    """Save a grid of images (one row per label, each ``(image, mask)``) with mask outlines in red."""
    width = max(len(items) for _, items in rows)
    size = rows[0][1][0][0].shape[0]
    sheet = np.zeros((len(rows) * size, width * size, 3), np.float32)
    for r, (_, items) in enumerate(rows):
        for c, (image, mask) in enumerate(items):
            tile = np.repeat(image[:, :, None], 3, axis=2)
            tile[_outline(mask)] = (1.0, 0.15, 0.1)
            sheet[r * size : (r + 1) * size, c * size : (c + 1) * size] = tile
    Image.fromarray(np.round(sheet * 255).astype(np.uint8), mode="RGB").save(path)


def write_second_set(
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

    Refuses a non-empty folder that holds no second set (so it never deletes foreign files); an earlier
    second set there is replaced.
    """
    root = Path(root)
    ours = (root / _MARKER).exists() or (root / "datalist.json").exists()
    if root.exists() and any(root.iterdir()) and not ours:
        raise FileExistsError(f"{root} is not empty and holds no second synthetic set; choose an empty or new folder.")
    if not 0.0 <= dicom_fraction <= 1.0:
        raise ValueError(f"dicom_fraction must be in [0, 1], got {dicom_fraction}.")
    params = {
        "seed": seed, "n_train": n_train, "n_val_normal": n_val_normal, "n_val_abnormal": n_val_abnormal,
        "n_test_normal": n_test_normal, "n_test_abnormal": n_test_abnormal, "size": size,
        "dicom_fraction": dicom_fraction, "version": GENERATOR_VERSION,
    }
    root.mkdir(parents=True, exist_ok=True)
    for name in _MANAGED:
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    (root / "masks").mkdir()
    counts = {"train": (n_train, 0), "val": (n_val_normal, n_val_abnormal), "test": (n_test_normal, n_test_abnormal)}
    datalist: dict[str, list[dict]] = {name: [] for name in _DATALIST_SPLITS.values()}
    manifest = []
    sheet: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"normal": [], **{kind: [] for kind in KINDS}}
    logger.info("Writing %d images (%dx%d) of the second synthetic set to %s",
                sum(map(sum, counts.values())), size, size, root)
    for split, (n_normal, n_abnormal) in counts.items():
        plan = [(i, None) for i in range(n_normal)] + [(i, KINDS[i % len(KINDS)]) for i in range(n_abnormal)]
        for index, kind in plan:
            image, mask = draw_image(seed, split, index, kind, size)
            abnormal = kind is not None
            stem = f"{'abnormal' if abnormal else 'normal'}_{index:04d}"
            folder = root / split / ("pneumonia_256" if abnormal else "normal_256")
            folder.mkdir(parents=True, exist_ok=True)
            fmt_rng = np.random.default_rng([seed, _STREAM, _SPLIT_CODES[split], index, int(abnormal), 1])
            if fmt_rng.uniform() < dicom_fraction:
                file = folder / f"{stem}.dcm"
                save_dicom(image, file, sample_dicom_style(fmt_rng), key=f"second_set/{seed}/{split}/{stem}")
            else:
                file = folder / f"{stem}.png"
                save_png(image, file)
            item = {"image": str(file.relative_to(root)), "label": int(abnormal), "kind": kind or "normal"}
            if abnormal:
                (root / "masks" / split).mkdir(exist_ok=True)
                save_png(mask, root / "masks" / split / f"{stem}.png")
                item["mask"] = f"masks/{split}/{stem}.png"
            datalist[_DATALIST_SPLITS[split]].append(item)
            manifest.append((split, item["image"], int(abnormal), kind or "normal"))
            if split == "test" and len(sheet[kind or "normal"]) < sheet_columns:
                sheet[kind or "normal"].append((image, mask))
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    with open(root / "findings.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("split", "file", "label", "finding"))
        writer.writerows(manifest)
    rows = [(label, items) for label, items in sheet.items() if items]
    if rows:
        contact_sheet(rows, root / "contact_sheet.png")
    (root / _MARKER).write_text(json.dumps({"params": params, "n_images": len(manifest)}))
    logger.info("Second synthetic set complete: %s", root)
    return root
