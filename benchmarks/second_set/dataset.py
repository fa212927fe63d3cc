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

from pathlib import Path

import numpy as np
from PIL import Image

from .anatomy import sample_anatomy
from .files import SPLIT_CODES, write_image_set
from .findings import KINDS, sample_finding
from .render import render, sample_acquisition

__all__ = ["GENERATOR_VERSION", "draw_image", "write_second_set", "contact_sheet"]

GENERATOR_VERSION = 1
_STREAM = 2  # keeps these seeds apart from any other generator's


def draw_image(seed: int, split: str, index: int, kind: str | None, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split`` (a normal one when ``kind`` is None): ``(image, mask)``, each ``size x size``,
    image float32 in [0, 1] (bright = dense), mask bool (empty for a normal image)."""
    rng = np.random.default_rng([seed, _STREAM, SPLIT_CODES[split], index, int(kind is not None)])
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
    """Write the set under ``root`` (see the module docstring) and return ``root`` (:func:`~.files.write_image_set`).

    A non-empty folder holding no earlier second set is refused (nothing foreign is deleted); an earlier second
    set there is replaced.
    """
    return write_image_set(root, "second", draw_image, KINDS, _STREAM, GENERATOR_VERSION, contact_sheet, seed,
                           n_train, n_val_normal, n_val_abnormal, n_test_normal, n_test_abnormal, size,
                           dicom_fraction, sheet_columns)
