"""Write the fourth synthetic set, in the second set's layout and datalist contract.

Layout under ``root``::

    train/normal_256/normal_NNNN.{png,dcm}               n_train normals
    {val,test}/{normal_256,pneumonia_256}/*.{png,dcm}    normals and abnormals
    masks/<split>/abnormal_NNNN.png                      mask of each abnormal image (0 / 255)
    datalist.json                                        {"training", "validation", "test"}: image, label, kind, mask
    findings.csv                                         split,file,label,finding
    contact_sheet.png                                    test normals and each kind with its mask outline
    .fourth_set.json                                     parameters and image count; written last

Normal items carry no ``mask``. Abnormal images of a split cycle through :data:`~.findings.KINDS`. Image ``i``
of a split comes from ``numpy.random.default_rng([seed, 4, split, i, abnormal])`` and its file format from
``[seed, 4, split, i, abnormal, 1]``, so an image depends neither on the counts nor on its file format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.second_set.files import SPLIT_CODES, write_image_set
from benchmarks.third_set.dataset import save_contact_sheet

from .acquisition import Acquisition, sample_acquisition
from .anatomy import Patient, sample_patient
from .devices import Stroke, sample_devices
from .findings import KINDS, Finding, sample_finding
from .render import render

__all__ = ["GENERATOR_VERSION", "STREAM", "draw_case", "draw_image", "write_fourth_set"]

GENERATOR_VERSION = 1
STREAM = 4  # the built-in, second and third sets use other streams


def draw_case(seed: int, split: str, index: int, kind: str | None
              ) -> tuple[Patient, Acquisition, tuple[str, ...], list[Stroke], Finding | None]:
    """``(patient, acquisition, device names, device strokes, finding)`` of image ``index`` of ``split``
    (finding None for a normal image); devices are drawn before, and independently of, the finding."""
    rng = np.random.default_rng([seed, STREAM, SPLIT_CODES[split], index, int(kind is not None)])
    patient = sample_patient(rng)
    acquisition = sample_acquisition(rng, patient.habitus)
    names, strokes = sample_devices(rng)
    finding = None if kind is None else sample_finding(rng, patient, kind)
    return patient, acquisition, names, strokes, finding


def draw_image(seed: int, split: str, index: int, kind: str | None, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` of image ``index`` of ``split``: ``size x size`` float32 in [0, 1] (bright = dense) and
    bool (empty for a normal image)."""
    patient, acquisition, _, strokes, finding = draw_case(seed, split, index, kind)
    return render(patient, acquisition, strokes, size, finding)


def write_fourth_set(
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
    """Write the set under ``root`` (see the module docstring) and return ``root``, through the shared writer
    :func:`benchmarks.second_set.files.write_image_set` (the third set's contact sheet).

    A non-empty folder holding no earlier fourth set is refused (nothing foreign is deleted); an earlier
    fourth set there is replaced.
    """
    return write_image_set(root, "fourth", draw_image, KINDS, STREAM, GENERATOR_VERSION, save_contact_sheet, seed,
                           n_train, n_val_normal, n_val_abnormal, n_test_normal, n_test_abnormal, size,
                           dicom_fraction, sheet_columns)
