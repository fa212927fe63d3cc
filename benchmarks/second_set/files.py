"""Image files of the second synthetic set: 8-bit grey PNG, and 12-16 bit DICOM (MONOCHROME2 or MONOCHROME1).

A DICOM file stores the displayed image ``d`` (``[0, 1]``, bright = dense) as unsigned integers
``raw = low + d * (high - low)`` (MONOCHROME2) or ``low + (1 - d) * (high - low)`` (MONOCHROME1), with a
Rescale Slope/Intercept and a LINEAR Window Center/Width that map ``[low, high]`` back onto the full display
range, so a viewer (and the bundle's reader) shows the same picture as the PNG, at 12-16 bit precision.
Files are Computed Radiography Image Storage objects, Explicit VR Little Endian, with UIDs derived from a
per-image key, so writing is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["DicomStyle", "sample_dicom_style", "save_png", "save_dicom"]


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
