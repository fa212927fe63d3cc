"""DICOM Secondary Capture of an anomaly-map overlay, filed beside the source radiograph's study.

The object follows the Secondary Capture Image IOD (DICOM PS3.3 A.8.1): the Patient and General Study
modules are copied from the source instance, so a PACS files it in the source's study; a new series and
instance (UIDs from :func:`pydicom.uid.generate_uid`) hold the overlay as 8-bit RGB pixels; the source is
referenced by its SOP Class and Instance UIDs in the Referenced Image Sequence and the Source Image
Sequence (General Image module); the SC Equipment module names this software.

Every value copied from the source is used as data only: it is never parsed or evaluated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

__all__ = ["COPIED_KEYWORDS", "REQUIRED_SOURCE_KEYWORDS", "secondary_capture", "write_secondary_capture"]

COPIED_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "BodyPartExamined",
    "PatientOrientation",
)
"""Source attributes copied into the Secondary Capture (Patient, General Study, and descriptive ones)."""

REQUIRED_SOURCE_KEYWORDS = ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID")
"""Source attributes without which the Secondary Capture cannot be filed beside and reference its source."""

_TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "StudyID", "AccessionNumber", "ReferringPhysicianName", "PatientOrientation")


def _source_value(source: Mapping[str, str], keyword: str) -> str:
    """A source attribute as a stripped string (``""`` when absent)."""
    value = source.get(keyword)
    return "" if value is None else str(value).strip()


def _checked_uid(source: Mapping[str, str], keyword: str) -> str:
    """A source UID, refused unless it is present and syntactically valid (PS3.5 9.1)."""
    value = _source_value(source, keyword)
    if not value:
        raise ValueError(f"source DICOM has no {keyword}: the Secondary Capture could not reference it.")
    if not UID(value).is_valid:
        raise ValueError(f"source DICOM {keyword} {value!r} is not a valid UID.")
    return value


def _character_set(source: Mapping[str, str]) -> str:
    """The source's Specific Character Set, or UTF-8 (``ISO_IR 192``) if it has none and copied text is not ASCII."""
    charset = _source_value(source, "SpecificCharacterSet")
    if charset:
        return charset
    copied = "".join(_source_value(source, k) for k in COPIED_KEYWORDS)
    return "" if copied.isascii() else "ISO_IR 192"


def secondary_capture(
    rgb: np.ndarray,
    source: Mapping[str, str],
    series_instance_uid: str | None = None,
    series_number: int = 9001,
    series_description: str = "Anomaly map (research use only)",
    image_comments: str = "",
    software_versions: str = "",
    manufacturer: str = "MONAI",
    model_name: str = "chest radiograph anomaly detection (SimSID/HCASC)",
    uid_prefix: str | None = None,
    now: datetime | None = None,
) -> Dataset:
    """Build the Secondary Capture dataset of an RGB overlay derived from one source DICOM instance.

    Args:
        rgb: ``H x W x 3`` ``uint8`` overlay, rows first (as displayed).
        source: the source instance's attributes as strings, e.g. ``meta["dicom"]`` of
            :class:`scripts.data.transforms.LoadRadiographd` (keys are DICOM keywords, multiple values joined by ``\\``).
            Must hold ``StudyInstanceUID``, ``SOPClassUID`` and ``SOPInstanceUID``.
        series_instance_uid: the new series' UID; a fresh one when ``None`` (pass the same UID for all
            overlays of one source series to group them).
        series_number: Series Number of the new series.
        series_description: Series Description of the new series.
        image_comments: Image Comments (e.g. the score and decision).
        software_versions: Secondary Capture Device Software Versions (e.g. the model version).
        manufacturer: Manufacturer and Secondary Capture Device Manufacturer.
        model_name: Secondary Capture Device Manufacturer's Model Name.
        uid_prefix: root of the generated UIDs; pydicom's when ``None``.
        now: creation time (for reproducible tests); the current time when ``None``.

    Returns:
        the dataset with its file meta information, ready for :func:`write_secondary_capture`.

    Raises:
        ValueError: ``rgb`` is not ``H x W x 3`` ``uint8``, or a required source UID is missing or invalid.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"overlay must be a H x W x 3 uint8 array, got {rgb.dtype} {rgb.shape}.")
    study_uid = _checked_uid(source, "StudyInstanceUID")
    source_class = _checked_uid(source, "SOPClassUID")
    source_instance = _checked_uid(source, "SOPInstanceUID")
    now = datetime.now() if now is None else now
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_instance_uid = generate_uid(prefix=uid_prefix) if uid_prefix else generate_uid()
    if series_instance_uid is None:
        series_instance_uid = generate_uid(prefix=uid_prefix) if uid_prefix else generate_uid()

    ds = Dataset()
    charset = _character_set(source)
    if charset:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    # SOP Common
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient, General Study (copied), plus descriptive attributes of the source
    for keyword in COPIED_KEYWORDS:
        value = _source_value(source, keyword)
        if value or keyword in _TYPE2_KEYWORDS:
            setattr(ds, keyword, value.split("\\") if "\\" in value else value)
    ds.StudyInstanceUID = study_uid
    # General Series: a new series in the source's study
    ds.Modality = "OT"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = date, time
    # General Equipment and SC Equipment
    ds.Manufacturer = manufacturer
    ds.ConversionType = "WSD"
    ds.SecondaryCaptureDeviceManufacturer = manufacturer
    ds.SecondaryCaptureDeviceManufacturerModelName = model_name
    if software_versions:
        ds.SecondaryCaptureDeviceSoftwareVersions = software_versions
    # General Image: derived from, and referencing, the source instance
    ds.InstanceNumber = _source_value(source, "InstanceNumber") or "1"
    ds.ContentDate, ds.ContentTime = date, time
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = "anomaly map |x - G(x)| of a normal-anatomy reconstruction, overlaid on the source"
    if image_comments:
        ds.ImageComments = image_comments
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ReferencedImageSequence = Sequence([_reference(source_class, source_instance)])
    ds.SourceImageSequence = Sequence([_reference(source_class, source_instance)])
    # Image Pixel: 8-bit RGB, colour-by-pixel
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """One item of an image reference sequence."""
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def write_secondary_capture(dataset: Dataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``dataset`` as a DICOM Part 10 file (preamble, ``DICM``, file meta).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass '--overwrite true' to replace the outputs of an earlier run.")
    dataset.save_as(path, enforce_file_format=True)
    return path
