"""Image files of the second synthetic set: 8-bit grey PNG, and 12-16 bit DICOM (MONOCHROME2 or MONOCHROME1).

A DICOM file stores the displayed image ``d`` (``[0, 1]``, bright = dense) as unsigned integers
``raw = low + d * (high - low)`` (MONOCHROME2) or ``low + (1 - d) * (high - low)`` (MONOCHROME1), with a
Rescale Slope/Intercept and a LINEAR Window Center/Width that map ``[low, high]`` back onto the full display
range, so a viewer (and the bundle's reader) shows the same picture as the PNG, at 12-16 bit precision.
Files are Computed Radiography Image Storage objects, Explicit VR Little Endian, with UIDs derived from a
per-image key, so writing is deterministic.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["DicomStyle", "sample_dicom_style", "save_png", "save_dicom", "write_image_set"]

logger = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DATALIST_SPLITS = {"train": "training", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class DicomStyle:
    """How one image is stored as DICOM: bits stored, photometric interpretation, stored value range, rescale."""

    bits_stored: int
    photometric: str
    low: int
    high: int
    intercept: float
    slope: float


def sample_dicom_style(rng: np.random.Generator) -> DicomStyle:
    """Draw a storage style: 12, 14 or 16 bits, MONOCHROME1 in 30 %, a stored range within the bit depth."""
    bits = int(rng.choice((12, 14, 16)))
    top = 2**bits - 1
    return DicomStyle(
        bits_stored=bits,
        photometric="MONOCHROME1" if rng.uniform() < 0.3 else "MONOCHROME2",
        low=int(rng.uniform(0.0, 0.15) * top),
        high=int(rng.uniform(0.75, 1.0) * top),
        intercept=float(rng.choice((0.0, -1024.0))),
        slope=float(rng.choice((1.0, 0.5))),
    )


def save_png(array: np.ndarray, path: Path) -> None:
    """Write an ``H x W`` array in ``[0, 1]`` (float or bool) as an 8-bit grey PNG."""
    data = np.round(np.clip(np.asarray(array, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(data, mode="L").save(path)


def save_dicom(image: np.ndarray, path: Path, style: DicomStyle, key: str) -> None:
    """Write the displayed ``H x W`` image (float in ``[0, 1]``) as a DICOM file (see the module docstring).

    ``key`` (e.g. ``"seed/split/name"``) makes the UIDs; the same key and image give the same bytes.
    """
    unit = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if style.photometric == "MONOCHROME1":
        unit = 1.0 - unit
    raw = np.round(style.low + unit * (style.high - style.low)).astype(np.uint16)
    value_low = style.slope * style.low + style.intercept
    value_high = style.slope * style.high + style.intercept
    # PS3.3 C.11.2.1.2.1 LINEAR: value_low -> 0 and value_high -> 1 when width - 1 = span, centre - 0.5 = midpoint
    width = value_high - value_low + 1.0
    center = 0.5 * (value_low + value_high) + 0.5

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[key, "instance"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[key, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[key, "series"])
    ds.Modality = "CR"
    ds.PatientID = key.replace("/", "_")[:64]
    ds.PatientName = "Synthetic^SecondSet"
    ds.StudyDate = "20260101"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = style.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = style.bits_stored
    ds.HighBit = style.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = f"{style.intercept:g}"
    ds.RescaleSlope = f"{style.slope:g}"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{center:.10g}"
    ds.WindowWidth = f"{width:.10g}"
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = raw.tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_image_set(
    root: str | Path,
    name: str,
    draw_image: Callable[[int, str, int, str | None, int], tuple[np.ndarray, np.ndarray]],
    kinds: Sequence[str],
    stream: int,
    version: int,
    contact_sheet: Callable[[list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]], Path], None],
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
    """Write a synthetic set (the second set's layout and datalist contract) under ``root`` and return ``root``.

    ``draw_image(seed, split, index, kind, size)`` gives image ``index`` of ``split`` (``kind`` None: a normal
    one) as ``(image, mask)``; abnormal images of a split cycle through ``kinds``. Image ``i``'s file format
    (PNG, or DICOM for a ``dicom_fraction`` of images) is drawn from ``default_rng([seed, stream, split, i,
    abnormal, 1])``, apart from the image. ``name`` ("second", "third") names the marker file
    ``.<name>_set.json`` (parameters and image count, written last), the DICOM keys and the messages;
    ``contact_sheet(rows, path)`` draws the test images of each label, ``rows`` as ``(label, [(image, mask)])``.
    A non-empty folder that holds no such set is refused (nothing foreign is deleted); an earlier one is replaced.
    """
    root = Path(root)
    marker = f".{name}_set.json"
    ours = (root / marker).exists() or (root / "datalist.json").exists()
    if root.exists() and any(root.iterdir()) and not ours:
        raise FileExistsError(f"{root} is not empty and holds no {name} synthetic set; choose an empty or new folder.")
    if not 0.0 <= dicom_fraction <= 1.0:
        raise ValueError(f"dicom_fraction must be in [0, 1], got {dicom_fraction}.")
    params = {
        "seed": seed, "n_train": n_train, "n_val_normal": n_val_normal, "n_val_abnormal": n_val_abnormal,
        "n_test_normal": n_test_normal, "n_test_abnormal": n_test_abnormal, "size": size,
        "dicom_fraction": dicom_fraction, "version": version,
    }
    root.mkdir(parents=True, exist_ok=True)
    for owned in ("train", "val", "test", "masks", "datalist.json", "findings.csv", "contact_sheet.png", marker):
        target = root / owned
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    (root / "masks").mkdir()
    counts = {"train": (n_train, 0), "val": (n_val_normal, n_val_abnormal), "test": (n_test_normal, n_test_abnormal)}
    datalist: dict[str, list[dict]] = {split: [] for split in DATALIST_SPLITS.values()}
    manifest = []
    sheet: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"normal": [], **{kind: [] for kind in kinds}}
    logger.info("Writing %d images (%dx%d) of the %s synthetic set to %s",
                sum(map(sum, counts.values())), size, size, name, root)
    for split, (n_normal, n_abnormal) in counts.items():
        plan = [(i, None) for i in range(n_normal)] + [(i, kinds[i % len(kinds)]) for i in range(n_abnormal)]
        for index, kind in plan:
            image, mask = draw_image(seed, split, index, kind, size)
            abnormal = kind is not None
            stem = f"{'abnormal' if abnormal else 'normal'}_{index:04d}"
            folder = root / split / ("pneumonia_256" if abnormal else "normal_256")
            folder.mkdir(parents=True, exist_ok=True)
            fmt_rng = np.random.default_rng([seed, stream, SPLIT_CODES[split], index, int(abnormal), 1])
            if fmt_rng.uniform() < dicom_fraction:
                file = folder / f"{stem}.dcm"
                save_dicom(image, file, sample_dicom_style(fmt_rng), key=f"{name}_set/{seed}/{split}/{stem}")
            else:
                file = folder / f"{stem}.png"
                save_png(image, file)
            label = kind or "normal"
            item = {"image": file.relative_to(root).as_posix(), "label": int(abnormal), "kind": label}
            if abnormal:
                (root / "masks" / split).mkdir(exist_ok=True)
                save_png(mask, root / "masks" / split / f"{stem}.png")
                item["mask"] = f"masks/{split}/{stem}.png"
            datalist[DATALIST_SPLITS[split]].append(item)
            manifest.append((split, item["image"], int(abnormal), label))
            if split == "test" and len(sheet[label]) < sheet_columns:
                sheet[label].append((image, mask))
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    with open(root / "findings.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("split", "file", "label", "finding"))
        writer.writerows(manifest)
    rows = [(label, items) for label, items in sheet.items() if items]
    if rows:
        contact_sheet(rows, root / "contact_sheet.png")
    (root / marker).write_text(json.dumps({"params": params, "n_images": len(manifest)}))
    logger.info("%s synthetic set complete: %s", name.capitalize(), root)
    return root
