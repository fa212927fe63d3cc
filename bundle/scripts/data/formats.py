"""What every radiograph reader shares: the formats the bundle reads and how a file is recognised from its
first bytes, the size limits checked from a header before decoding, the load error that names the file, and the
``H x W`` ``float32`` display image in ``[0, 1]`` with its format-independent metadata (``docs/io.md``).

The readers: :class:`scripts.data.dicom.DicomRadiographReader` (DICOM),
:class:`scripts.data.raster.PILRadiographReader` (PNG, JPEG), :class:`scripts.data.raster.NibabelRadiographReader`
(NIfTI).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import PathLike
from monai.utils import MetaKeys, ensure_tuple

__all__ = [
    "DICOM_META_KEYWORDS",
    "DICOM_SUFFIXES",
    "GZIP_SIGNATURE",
    "ITK_SUFFIXES",
    "ImageLimits",
    "inflate_bounded",
    "LimitedReader",
    "RadiographLoadError",
    "SUPPORTED_SUFFIXES",
    "detect_format",
    "finish_unit",
    "is_supported_file",
    "luma",
    "range_unit",
    "read_bounded",
    "read_head",
    "reader_meta",
    "scale_finite",
    "single_path",
]

logger = logging.getLogger(__name__)

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
"""NRRD and MetaImage files, read through ITK."""

SUPPORTED_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".nii", ".nii.gz", *ITK_SUFFIXES)
"""File name endings :func:`is_supported_file` accepts without looking at the content."""

DICOM_META_KEYWORDS = (
    "SpecificCharacterSet",
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
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "FrameOfReferenceUID",
    "BodyPartExamined",
    "ViewPosition",
    "ImageLaterality",
    "PatientOrientation",
    "Manufacturer",
    "InstitutionName",
)
"""DICOM attributes copied, as plain strings, into ``meta["dicom"]``: what a derived Secondary Capture
(patient, study, and a reference to the source instance) needs. Every loaded image carries all of these
keys (empty strings for non-DICOM files) so that batches of mixed formats collate."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
GZIP_SIGNATURE = b"\x1f\x8b"
_SNIFF_BYTES = 544  # the NIfTI-2 header (540 bytes) plus its 4-byte extension flag
DICOM_SUFFIXES = (".dcm", ".dicom")
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as PIL's RGB -> "L"
class RadiographLoadError(ValueError):
    """A file could not be loaded as a radiograph; the message names the file, the reason and a remedy.

    Args:
        path: the file that failed.
        reason: what is wrong with it.
        hint: what the user can do about it (optional).
    """

    def __init__(self, path: PathLike, reason: str, hint: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        message = f"cannot load radiograph '{self.path}': {reason}."
        super().__init__(f"{message} {hint[:1].upper()}{hint[1:]}." if hint else message)

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return type(self), (self.path, self.reason, self.hint)


@dataclass(frozen=True)
class ImageLimits:
    """Size limits checked from the header of a file, before its pixels are decoded.

    Args:
        max_pixels: largest ``rows * columns`` accepted.
        min_side: smallest accepted number of rows and of columns.
        max_aspect_ratio: largest accepted ``max(rows, cols) / min(rows, cols)``.
    """

    max_pixels: int = 50_000_000
    min_side: int = 16
    max_aspect_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.min_side < 1 or self.max_aspect_ratio < 1:
            raise ValueError(
                f"invalid limits: max_pixels={self.max_pixels} and min_side={self.min_side} must be >= 1, "
                f"max_aspect_ratio={self.max_aspect_ratio} must be >= 1."
            )

    @property
    def max_file_bytes(self) -> int:
        """Largest file read: 8 bytes per allowed pixel plus 64 MiB for headers and other elements."""
        return 8 * self.max_pixels + 64 * 2**20

    def check(self, path: PathLike, rows: int, cols: int) -> None:
        """Raise :class:`RadiographLoadError` unless a ``rows x cols`` image is within the limits."""
        if rows < self.min_side or cols < self.min_side:
            raise RadiographLoadError(
                path,
                f"image is {rows} x {cols} pixels, below the minimum of {self.min_side} pixels per side",
                "this is too small to be a radiograph (a thumbnail or icon?); use the original image",
            )
        if rows * cols > self.max_pixels:
            raise RadiographLoadError(
                path,
                f"image is {rows} x {cols} = {rows * cols} pixels, more than max_pixels={self.max_pixels}",
                "downsample the image first, or raise max_pixels if the machine has the memory for it",
            )
        aspect = max(rows, cols) / min(rows, cols)
        if aspect > self.max_aspect_ratio:
            raise RadiographLoadError(
                path,
                f"image is {rows} x {cols} pixels, aspect ratio {aspect:.1f}:1 above "
                f"max_aspect_ratio={self.max_aspect_ratio:g}",
                "a chest radiograph is roughly square and resizing this one would distort it beyond use; "
                "crop it, or raise max_aspect_ratio",
            )


class LimitedReader:
    """Base of this bundle's radiograph readers (before the MONAI reader class they extend): the
    :class:`ImageLimits` each of them checks from a file's header before decoding.

    Args:
        max_pixels: largest ``rows * columns`` accepted.
        min_side: smallest accepted number of rows and of columns.
        max_aspect_ratio: largest accepted ``max(rows, cols) / min(rows, cols)``.
        reader_kwargs: passed to the MONAI reader's constructor.
    """

    def __init__(
        self, max_pixels: int = 50_000_000, min_side: int = 16, max_aspect_ratio: float = 4.0, **reader_kwargs: Any
    ) -> None:
        super().__init__(**reader_kwargs)
        self.limits = ImageLimits(max_pixels, min_side, max_aspect_ratio)


def inflate_bounded(path: PathLike, data: bytes, wbits: int, limits: ImageLimits, what: str) -> bytes:
    """Inflate ``data`` (``wbits`` as for ``zlib.decompressobj``: raw deflate, zlib or gzip), refusing more than
    ``limits.max_file_bytes`` of output (a zip bomb) with an error that names ``what`` was inflated.

    Raises:
        RadiographLoadError: the data is corrupt or inflates beyond the bound.
    """
    inflater = zlib.decompressobj(wbits)
    try:
        content = inflater.decompress(data, limits.max_file_bytes)
    except zlib.error as exc:
        reason = f"{what} cannot be inflated ({exc})"
        raise RadiographLoadError(path, reason, "the file is truncated or corrupt") from exc
    if inflater.unconsumed_tail:
        raise RadiographLoadError(path, f"{what} inflates beyond the {limits.max_file_bytes} bytes allowed",
                                  "raise max_pixels if this is a genuine radiograph")
    return content


def single_path(data: Sequence[PathLike] | PathLike, reader: str) -> Path:
    """The one file a reader was given; readers here do not stack several files into channels."""
    names = ensure_tuple(data)
    if len(names) != 1:
        raise ValueError(f"{reader} reads one file at a time, got {len(names)}: {names}.")
    return Path(names[0])


def read_head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of ``path`` (fewer if the file is shorter)."""
    with open(path, "rb") as stream:
        return stream.read(size)


def read_bounded(path: Path, limits: ImageLimits) -> bytes:
    """The whole file, refused above ``limits.max_file_bytes``.

    Parsers then read from memory, where a corrupt length field cannot make them allocate more than the
    file holds (a buffered file's ``read(n)`` allocates ``n`` bytes up front).
    """
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise RadiographLoadError(
                path,
                f"file is {size} bytes, more than the {limits.max_file_bytes} allowed for "
                f"max_pixels={limits.max_pixels}",
                "raise max_pixels if this is a genuine radiograph",
            )
        with open(path, "rb") as stream:
            raw = stream.read(size + 1)
    except OSError as exc:
        reason = f"file cannot be read ({exc.strerror or exc})"
        raise RadiographLoadError(path, reason, "check permissions") from exc
    if not raw:
        raise RadiographLoadError(path, "file is empty (0 bytes)", "re-export or re-download it")
    return raw


def _is_nifti_header(head: bytes) -> bool:
    """Whether ``head`` starts with a single-file NIfTI-1 (``n+1``) or NIfTI-2 (``n+2``) header."""
    if len(head) >= 348 and head[344:348] == b"n+1\x00":
        return 348 in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))
    if len(head) >= 540 and head[4:8] == b"n+2\x00":
        return 540 in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))
    return False


def _gunzip_head(path: Path) -> bytes:
    """The first bytes of a gzip file's content, or ``b""`` if it does not decompress."""
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read(_SNIFF_BYTES)
    except (OSError, EOFError, zlib.error):
        return b""


def detect_format(path: PathLike) -> str:
    """The format of a file judged by its content: ``"dicom"``, ``"png"``, ``"jpeg"``, ``"nifti"`` or ``"itk"``
    (NRRD, MetaImage).

    The content decides, not the extension, so that a DICOM named ``.png`` still loads as DICOM. The only
    exceptions: a DICOM file without the 128-byte preamble and ``DICM`` prefix is recognised by a
    ``.dcm``/``.dicom`` extension, and NIfTI, NRRD and MetaImage files must be named as such (nibabel and ITK
    pick the format from the name).

    Raises:
        RadiographLoadError: the file is missing, is a folder, a device, pipe or socket, is empty, cannot be read,
            or is none of the supported formats.
    """
    path = Path(path)
    if not path.exists():
        raise RadiographLoadError(path, "file not found", "check the path and the dataset list")
    if path.is_dir():
        raise RadiographLoadError(path, "is a folder", "pass one image file; DICOM series folders are not read")
    if not path.is_file():
        raise RadiographLoadError(
            path, "not a regular file (a device, pipe or socket, or a link to one)", "replace it by the image file"
        )
    try:
        head = read_head(path, _SNIFF_BYTES)
    except OSError as exc:
        raise RadiographLoadError(path, f"file cannot be read ({exc.strerror or exc})", "check permissions") from exc
    if not head:
        raise RadiographLoadError(path, "file is empty (0 bytes)", "re-export or re-download it")
    name = path.name.lower()
    if head[128:132] == b"DICM":
        found = "dicom"
    elif head.startswith(_PNG_SIGNATURE):
        found = "png"
    elif head.startswith(_JPEG_SIGNATURE):
        found = "jpeg"
    elif _is_nifti_header(head) or (head.startswith(GZIP_SIGNATURE) and _is_nifti_header(_gunzip_head(path))):
        if not name.endswith((".nii", ".nii.gz")):
            raise RadiographLoadError(
                path, "content is NIfTI but the name does not end in .nii or .nii.gz", "rename the file"
            )
        found = "nifti"
    elif name.endswith(ITK_SUFFIXES) and (head.startswith(b"NRRD") or head.startswith(b"ObjectType")
                                          or head.startswith(b"NDims")):
        found = "itk"  # NRRD magic, or a MetaImage text header
    elif name.endswith(DICOM_SUFFIXES):
        found = "dicom"  # DICOM without preamble (not PS3.10 conformant, still common in old archives)
    else:
        raise RadiographLoadError(
            path,
            "content is not DICOM, PNG, JPEG, NIfTI, NRRD or MetaImage",
            "convert the image to one of these formats (see bundle/docs/io.md)",
        )
    suffix_format = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".dcm": "dicom", ".dicom": "dicom"}
    expected = suffix_format.get(path.suffix.lower())
    if expected is not None and expected != found:
        logger.info("%s: extension says %s but the content is %s; reading it as %s.", path, expected, found, found)
    return found


def is_supported_file(path: PathLike) -> bool:
    """Whether a folder scan should offer ``path`` to the loader.

    True for anything but a folder named with one of :data:`SUPPORTED_SUFFIXES`, or any other regular file that
    starts with the DICOM preamble and ``DICM`` prefix (DICOM files often have no extension). False for
    ``DICOMDIR`` index files and macOS ``._*`` resource-fork files. The file is not validated: a damaged
    file, a broken link or a link to a device still fails loudly when loaded, rather than silently dropping out
    of a dataset.
    """
    path = Path(path)
    if path.name.startswith("._") or path.name.upper() == "DICOMDIR" or path.is_dir():
        return False
    if path.name.lower().endswith(SUPPORTED_SUFFIXES):
        return True
    if not path.is_file():
        return False
    try:
        return read_head(path, 132)[128:132] == b"DICM"
    except OSError:
        return False


def reader_meta(rows: int, cols: int, source_format: str, dicom: dict[str, str] | None = None) -> dict[str, Any]:
    """The format-independent metadata every reader here returns with its ``H x W`` array."""
    return {
        MetaKeys.SPATIAL_SHAPE: np.asarray([rows, cols]),
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        "source_format": source_format,
        "dicom": dicom if dicom is not None else dict.fromkeys(DICOM_META_KEYWORDS, ""),
    }


def luma(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` RGB (any scale) -> ``H x W`` grey by ITU-R BT.601 luma, same scale."""
    return np.tensordot(rgb.astype(np.float64), _LUMA_WEIGHTS, axes=([-1], [0]))


def finish_unit(path: PathLike, unit: np.ndarray) -> np.ndarray:
    """Validate a displayed ``H x W`` image in ``[0, 1]`` and return it as ``float32``.

    Raises:
        RadiographLoadError: the image holds non-finite values or is constant (nothing to score).
    """
    if unit.ndim != 2:
        raise RadiographLoadError(path, f"pixels decoded to shape {unit.shape}, expected rows x columns")
    if not np.isfinite(unit).all():
        raise RadiographLoadError(path, "pixel values are not finite after display scaling", "check the file")
    unit = np.clip(unit, 0.0, 1.0).astype(np.float32)
    low, high = float(unit.min()), float(unit.max())
    if high <= low:
        raise RadiographLoadError(
            path,
            f"image is constant (every pixel displays as {low:.3g})",
            "the file holds no image content; check the export (or the DICOM window)",
        )
    return unit


def range_unit(values: np.ndarray) -> np.ndarray:
    """Min-max scale to ``[0, 1]`` (the auto-window of a viewer when the file gives none)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values, dtype=np.float64)
    return (values - low) / (high - low)


def scale_finite(path: PathLike, grey: np.ndarray) -> np.ndarray:
    """Min-max scale the finite values of an ``H x W`` image to ``[0, 1]``; NaN and -inf become 0, +inf 1 (logged).

    Raises:
        RadiographLoadError: no value is finite.
    """
    finite = np.isfinite(grey)
    if not finite.any():
        raise RadiographLoadError(path, "image has no finite values", "the file holds no image content")
    out = np.empty(grey.shape, dtype=np.float64)
    out[finite] = range_unit(grey[finite])
    if not finite.all():
        logger.warning("%s: %d non-finite pixels set to 0 (NaN, -inf) or 1 (+inf).", path, int((~finite).sum()))
        out[~finite] = np.where(np.isposinf(grey[~finite]), 1.0, 0.0)
    return out
