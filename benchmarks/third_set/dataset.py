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

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_erosion

from benchmarks.second_set.files import SPLIT_CODES, write_image_set

from .acquisition import sample_acquisition
from .anatomy import sample_anatomy
from .findings import KINDS, sample_finding
from .render import render

__all__ = ["GENERATOR_VERSION", "STREAM", "draw_case", "draw_image", "write_third_set", "save_contact_sheet"]

GENERATOR_VERSION = 1
STREAM = 3  # the built-in set and the second set use other streams


def draw_case(seed: int, split: str, index: int, kind: str | None) -> tuple:
    """``(anatomy, acquisition, finding)`` of image ``index`` of ``split`` (finding None for a normal image)."""
    rng = np.random.default_rng([seed, STREAM, SPLIT_CODES[split], index, int(kind is not None)])
    anatomy = sample_anatomy(rng)
    acquisition = sample_acquisition(rng)
    return anatomy, acquisition, None if kind is None else sample_finding(rng, anatomy, kind)


def draw_image(seed: int, split: str, index: int, kind: str | None, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` of image ``index`` of ``split``: ``size x size`` float32 in [0, 1] (bright = dense) and
    bool (empty for a normal image)."""
    anatomy, acquisition, finding = draw_case(seed, split, index, kind)
    return render(anatomy, acquisition, size, finding)


def save_contact_sheet(rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]], path: Path) -> None:
    """RGB grid of ``(image, mask)`` tiles, one row per label (``(label, tiles)``), mask borders drawn in red."""
    size = rows[0][1][0][0].shape[0]
    columns = max(len(tiles) for _, tiles in rows)
    canvas = np.zeros((len(rows), size, columns, size, 3), np.float32)
    for r, (_, row) in enumerate(rows):
        for c, (image, mask) in enumerate(row):
            canvas[r, :, c] = image[:, :, None]
            canvas[r, :, c][mask & ~binary_erosion(mask)] = (1.0, 0.2, 0.1)
    Image.fromarray(np.round(canvas.reshape(len(rows) * size, columns * size, 3) * 255).astype(np.uint8)).save(path)


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
    """Write the set under ``root`` (see the module docstring) and return ``root`` (the second set's
    writer, :func:`benchmarks.second_set.files.write_image_set`).

    A non-empty folder holding no earlier third set is refused (nothing foreign is deleted); an earlier third
    set there is replaced.
    """
    return write_image_set(root, "third", draw_image, KINDS, STREAM, GENERATOR_VERSION, save_contact_sheet, seed,
                           n_train, n_val_normal, n_val_abnormal, n_test_normal, n_test_abnormal, size,
                           dicom_fraction, sheet_columns)
