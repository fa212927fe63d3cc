"""MONAI image readers that return a radiograph the way a radiologist's viewer displays it.

Every reader here yields, for one file, a ``H x W`` ``float32`` array in ``[0, 1]`` (row index first,
so the array looks like the PNG of the same image) and a small, format-independent metadata dict.
They refuse bad input with :class:`RadiographLoadError` and check the image size from the file header
*before* any pixel data is decoded, so that a hostile or corrupt header cannot trigger an unbounded
allocation. The rules are documented in ``bundle/docs/io.md``.

Readers:

- :class:`DicomRadiographReader`: DICOM through pydicom with the display pipeline (decode, Modality LUT,
  VOI LUT or window, MONOCHROME1 inversion, colour to grey).
- :class:`PILRadiographReader`: PNG and JPEG through MONAI's ``PILReader``.
- :class:`NibabelRadiographReader`: 2-D NIfTI through MONAI's ``NibabelReader``.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from monai.config import PathLike
from monai.data import ImageReader, NibabelReader, PILReader
from monai.utils import MetaKeys, ensure_tuple
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

__all__ = [
    "DICOM_META_KEYWORDS",
    "DicomImage",
    "DicomRadiographReader",
    "ImageLimits",
    "NibabelRadiographReader",
    "PILRadiographReader",
    "RasterImage",
    "RadiographLoadError",
    "SUPPORTED_SUFFIXES",
    "detect_format",
    "is_supported_file",
]

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".nii", ".nii.gz")
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
_GZIP_SIGNATURE = b"\x1f\x8b"
_SNIFF_BYTES = 544  # the NIfTI-2 header (540 bytes) plus its 4-byte extension flag
_DICOM_SUFFIXES = (".dcm", ".dicom")
_DICOM_CONVERT_HINT = (
    "convert it to an uncompressed transfer syntax, e.g. `dcmdjpeg in.dcm out.dcm` (dcmtk) "
    "or `gdcmconv --raw in.dcm out.dcm`"
)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as PIL's RGB -> "L"
# JPEG (ISO 10918-1) start-of-frame markers, plus SOF55 of JPEG-LS (ISO 14495-1)
_JPEG_SOF_MARKERS = frozenset(
    [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7]
)
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xDA)])
# explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset(
    vr.encode() for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)


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


def _single_path(data: Sequence[PathLike] | PathLike, reader: str) -> Path:
    """The one file a reader was given; readers here do not stack several files into channels."""
    names = ensure_tuple(data)
    if len(names) != 1:
        raise ValueError(f"{reader} reads one file at a time, got {len(names)}: {names}.")
    return Path(names[0])


def _read_head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of ``path`` (fewer if the file is shorter)."""
    with open(path, "rb") as stream:
        return stream.read(size)


def _read_bounded(path: Path, limits: ImageLimits) -> bytes:
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
    """The format of a file judged by its content: ``"dicom"``, ``"png"``, ``"jpeg"`` or ``"nifti"``.

    The content decides, not the extension, so that a DICOM named ``.png`` still loads as DICOM. The only
    exceptions: a DICOM file without the 128-byte preamble and ``DICM`` prefix is recognised by a
    ``.dcm``/``.dicom`` extension, and a NIfTI file must be named ``.nii``/``.nii.gz`` (nibabel picks
    the format from the name).

    Raises:
        RadiographLoadError: the file is missing, is a folder, is empty, cannot be read, or is none of
            the supported formats.
    """
    path = Path(path)
    if not path.exists():
        raise RadiographLoadError(path, "file not found", "check the path and the dataset list")
    if not path.is_file():
        raise RadiographLoadError(
            path, "not a regular file (a folder?)", "pass one image file; DICOM series folders are not read"
        )
    try:
        head = _read_head(path, _SNIFF_BYTES)
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
    elif _is_nifti_header(head) or (head.startswith(_GZIP_SIGNATURE) and _is_nifti_header(_gunzip_head(path))):
        if not name.endswith((".nii", ".nii.gz")):
            raise RadiographLoadError(
                path, "content is NIfTI but the name does not end in .nii or .nii.gz", "rename the file"
            )
        found = "nifti"
    elif name.endswith(_DICOM_SUFFIXES):
        found = "dicom"  # DICOM without preamble (not PS3.10 conformant, still common in old archives)
    else:
        raise RadiographLoadError(
            path,
            "content is not DICOM, PNG, JPEG or NIfTI",
            "convert the image to one of these formats (see bundle/docs/io.md)",
        )
    suffix_format = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".dcm": "dicom", ".dicom": "dicom"}
    expected = suffix_format.get(path.suffix.lower())
    if expected is not None and expected != found:
        logger.info("%s: extension says %s but the content is %s; reading it as %s.", path, expected, found, found)
    return found


def is_supported_file(path: PathLike) -> bool:
    """Whether a folder scan should offer ``path`` to the loader.

    True for a regular file named with one of :data:`SUPPORTED_SUFFIXES`, or any other regular file that
    starts with the DICOM preamble and ``DICM`` prefix (DICOM files often have no extension). False for
    ``DICOMDIR`` index files and macOS ``._*`` resource-fork files. The file is not validated: a damaged
    file still fails loudly when loaded, rather than silently dropping out of a dataset.
    """
    path = Path(path)
    if path.name.startswith("._") or path.name.upper() == "DICOMDIR" or not path.is_file():
        return False
    if path.name.lower().endswith(SUPPORTED_SUFFIXES):
        return True
    try:
        return _read_head(path, 132)[128:132] == b"DICM"
    except OSError:
        return False


def _meta(rows: int, cols: int, source_format: str, dicom: dict[str, str] | None = None) -> dict[str, Any]:
    """The format-independent metadata every reader here returns with its ``H x W`` array."""
    return {
        MetaKeys.SPATIAL_SHAPE: np.asarray([rows, cols]),
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        "source_format": source_format,
        "dicom": dicom if dicom is not None else dict.fromkeys(DICOM_META_KEYWORDS, ""),
    }


def _luma(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` RGB (any scale) -> ``H x W`` grey by ITU-R BT.601 luma, same scale."""
    return np.tensordot(rgb.astype(np.float64), _LUMA_WEIGHTS, axes=([-1], [0]))


def _finish(path: PathLike, unit: np.ndarray) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------- DICOM


@dataclass
class DicomImage:
    """A parsed DICOM file whose header passed the checks, pixels not yet decoded."""

    path: Path
    dataset: Dataset
    transfer_syntax: UID
    meta: dict[str, str] = field(default_factory=dict)


def _dicom_value(ds: Dataset, path: Path, keyword: str) -> Any:
    """``ds.get(keyword)``, turning a malformed stored value into :class:`RadiographLoadError`."""
    try:
        return ds.get(keyword)
    except MemoryError:
        raise
    except Exception as exc:  # pydicom converts raw bytes lazily: any error here is a malformed element
        raise RadiographLoadError(path, f"DICOM element {keyword} is malformed ({exc})", "the file is corrupt") from exc


def _dicom_int(ds: Dataset, path: Path, keyword: str, default: int | None = None) -> int:
    """An integer DICOM header element; missing, multi-valued or non-integer values raise."""
    value = _dicom_value(ds, path, keyword)
    if value is None or value == "":
        if default is None:
            raise RadiographLoadError(path, f"DICOM element {keyword} is missing", "the image header is incomplete")
        return default
    if isinstance(value, (MultiValue, list, tuple)):
        if len(value) != 1:
            raise RadiographLoadError(path, f"DICOM element {keyword} has {len(value)} values, expected 1")
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise RadiographLoadError(path, f"DICOM element {keyword} is not a number") from exc
    if not number.is_integer():
        raise RadiographLoadError(path, f"DICOM element {keyword} is not an integer ({number:g})")
    return int(number)


def _dicom_text(ds: Dataset, keyword: str) -> str:
    """A DICOM element as a plain string (multiple values joined by ``\\``), ``""`` if absent or unreadable."""
    try:
        value = ds.get(keyword)
    except MemoryError:
        raise
    except Exception:  # identifiers are informative only: a malformed one must not stop the load
        logger.debug("DICOM element %s is unreadable; left empty.", keyword, exc_info=True)
        return ""
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _deflated_dataset_offset(raw: bytes, start: int) -> int | None:
    """Where the dataset starts if the file meta group at ``start`` names the deflated transfer syntax.

    Walks the group 0002 elements (always explicit VR little endian, PS3.10 7.1) as pydicom does and
    returns the offset after the last one; ``None`` if the group is malformed or names another syntax.
    """
    offset, transfer_syntax = start, b""
    while offset + 8 <= len(raw):
        group, element = struct.unpack_from("<HH", raw, offset)
        if group != 0x0002:
            break
        if raw[offset + 4 : offset + 6] in _LONG_VRS:
            if offset + 12 > len(raw):
                return None
            length, value_at = struct.unpack_from("<I", raw, offset + 8)[0], offset + 12
        else:
            length, value_at = struct.unpack_from("<H", raw, offset + 6)[0], offset + 8
        if length == 0xFFFFFFFF or value_at + length > len(raw):
            return None
        if element == 0x0010:
            transfer_syntax = raw[value_at : value_at + length].rstrip(b"\0 ")
        offset = value_at + length
    return offset if transfer_syntax == DeflatedExplicitVRLittleEndian.encode() else None


def _jpeg_frame_header(stream: bytes) -> tuple[int, int, int] | None:
    """``(rows, columns, components)`` from a JPEG / JPEG-LS start-of-frame segment, ``None`` if absent."""
    if not stream.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(stream):
        if stream[offset] != 0xFF:
            return None
        marker = stream[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            offset += 2
            continue
        if marker in _JPEG_SOF_MARKERS:
            segment = stream[offset + 4 : offset + 10]  # precision(1), rows(2), columns(2), components(1)
            if len(segment) < 6:
                return None
            rows, cols = struct.unpack(">HH", segment[1:5])
            return rows, cols, segment[5]
        if marker == 0xDA:  # start of scan before any frame header
            return None
        length = int.from_bytes(stream[offset + 2 : offset + 4], "big")
        if length < 2:
            return None
        offset += 2 + length
    return None


def _j2k_frame_header(stream: bytes) -> tuple[int, int, int] | None:
    """``(rows, columns, components)`` from a JPEG 2000 SIZ segment (raw or JP2-wrapped), else ``None``."""
    start = stream.find(b"\xff\x4f\xff\x51", 0, 1 << 16)  # SOC then SIZ (ISO 15444-1 A.5.1)
    if start < 0:
        return None
    siz = stream[start + 4 : start + 4 + 38]  # Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz
    if len(siz) < 38:
        return None
    xsiz, ysiz, x_offset, y_offset = struct.unpack(">IIII", siz[4:20])
    return ysiz - y_offset, xsiz - x_offset, int.from_bytes(siz[36:38], "big")


def _first_float(value: Any) -> float:
    """The first value of a (possibly multi-valued) numeric DICOM element as ``float``."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0]
    return float(value)


def _voi_lut_unit(values: np.ndarray, ds: Dataset, path: Path) -> np.ndarray | None:
    """Apply the first VOI LUT of the VOI LUT Sequence, scaled by its output range ``2**bits - 1``."""
    sequence = _dicom_value(ds, path, "VOILUTSequence")
    if not sequence:
        return None
    try:
        entries, first_mapped, bits = (int(v) for v in sequence[0].LUTDescriptor)
        # inputs outside the LUT take its first/last entry (PS3.3 C.11.2.1.1); clipping here also keeps
        # pydicom's unsigned index array from wrapping around for large inputs
        last_mapped = first_mapped + (entries or 2**16) - 1
        indices = np.clip(np.rint(values), first_mapped, last_mapped).astype(np.int64)
        return apply_voi(indices, ds, index=0).astype(np.float64) / (2**bits - 1)
    except MemoryError:
        raise
    except Exception as exc:  # malformed LUT: a viewer falls back to the window, so do we
        logger.warning("%s: VOI LUT Sequence unusable (%s); using the window or the pixel range instead.", path, exc)
        return None


def _window_unit(values: np.ndarray, ds: Dataset, path: Path) -> np.ndarray | None:
    """Apply the first Window Center/Width to ``[0, 1]`` by the VOI LUT Function (PS3.3 C.11.2.1.2)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center = _first_float(ds.WindowCenter)
        width = _first_float(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    except MemoryError:
        raise
    except Exception as exc:
        logger.warning("%s: window unreadable (%s); using the pixel range instead.", path, exc)
        return None
    if not (math.isfinite(center) and math.isfinite(width)):
        logger.warning("%s: window %s/%s not finite; using the pixel range instead.", path, center, width)
        return None
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if function == "LINEAR" and width > 1:
            return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
        if function == "LINEAR" and width == 1:
            return (values > center - 0.5).astype(np.float64)
        if function == "LINEAR_EXACT" and width > 0:
            return np.clip((values - center) / width + 0.5, 0.0, 1.0)
        if function == "SIGMOID" and width > 0:
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    logger.warning(
        "%s: window %g/%g with VOI LUT Function %s is invalid; using the pixel range instead.",
        path,
        center,
        width,
        function,
    )
    return None


def _range_unit(values: np.ndarray) -> np.ndarray:
    """Min-max scale to ``[0, 1]`` (the auto-window of a viewer when the file gives none)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values, dtype=np.float64)
    return (values - low) / (high - low)


class DicomRadiographReader(ImageReader):
    """Read one DICOM image as displayed: ``H x W`` ``float32`` in ``[0, 1]``, rows first.

    Pipeline (PS3.3 C.11 / PS3.4 N.2): decode the first (only) frame with pydicom's decoders (compressed
    transfer syntaxes through the installed pylibjpeg plugins); for MONOCHROME1/2 apply the Modality LUT
    or rescale, then the first VOI LUT of the VOI LUT Sequence (output ``0 .. 2**bits - 1`` -> ``[0, 1]``),
    else the first window (its output range -> ``[0, 1]``), else the pixel value range; invert
    MONOCHROME1. Colour (RGB, YBR, palette) becomes BT.601 luma of the values divided by their maximum
    (``2**BitsStored - 1``, or the palette's entry maximum).

    Refused, with :class:`RadiographLoadError`, before any pixel decoding: unreadable files, files over
    :attr:`ImageLimits.max_file_bytes`, objects without pixel data (SR, RT plans, ...), floating-point
    pixel data, multi-frame images, transfer syntaxes without an installed decoder, sizes outside
    ``limits``, and compressed frames whose own header disagrees with the DICOM header.

    Args:
        max_pixels: see :class:`ImageLimits`.
        min_side: see :class:`ImageLimits`.
        max_aspect_ratio: see :class:`ImageLimits`.
    """

    def __init__(self, max_pixels: int = 50_000_000, min_side: int = 16, max_aspect_ratio: float = 4.0) -> None:
        super().__init__()
        self.limits = ImageLimits(max_pixels, min_side, max_aspect_ratio)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True if every file is named ``.dcm``/``.dicom`` or starts with the DICOM preamble."""
        for name in ensure_tuple(filename):
            path = Path(name)
            if not path.name.lower().endswith(_DICOM_SUFFIXES):
                try:
                    if _read_head(path, 132)[128:132] != b"DICM":
                        return False
                except OSError:
                    return False
        return True

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> DicomImage:
        """Parse the header of one DICOM file and check it; the pixels are decoded in :meth:`get_data`.

        Raises:
            RadiographLoadError: see the class docstring.
        """
        path = _single_path(data, type(self).__name__)
        raw = _read_bounded(path, self.limits)
        has_prefix = raw[128:132] == b"DICM"
        self._check_deflated(path, raw, meta_start=132 if has_prefix else 0)
        try:
            ds = pydicom.dcmread(io.BytesIO(raw), force=not has_prefix)
        except MemoryError:
            raise
        except Exception as exc:  # pydicom raises many types on malformed input
            raise RadiographLoadError(
                path, f"not a readable DICOM file ({type(exc).__name__}: {exc})", "the file is truncated or corrupt"
            ) from exc
        transfer_syntax = self._transfer_syntax(path, ds)
        self._check_header(path, ds, transfer_syntax)
        meta = {keyword: _dicom_text(ds, keyword) for keyword in DICOM_META_KEYWORDS}
        return DicomImage(path=path, dataset=ds, transfer_syntax=transfer_syntax, meta=meta)

    def get_data(self, img: DicomImage) -> tuple[np.ndarray, dict]:
        """Decode and display the image: ``(H x W float32 in [0, 1], meta)``.

        Raises:
            RadiographLoadError: the pixel data cannot be decoded, or displays as a constant image.
        """
        if not isinstance(img, DicomImage):
            raise TypeError(f"{type(self).__name__}.get_data expects a DicomImage from read(), got {type(img)}.")
        path, ds = img.path, img.dataset
        try:
            pixels, properties = get_decoder(img.transfer_syntax).as_array(ds, index=0, as_rgb=True)
        except MemoryError:
            raise
        except Exception as exc:  # pydicom and its plugins raise many types on corrupt pixel data
            raise RadiographLoadError(
                path,
                f"pixel data cannot be decoded ({type(exc).__name__}: {exc})",
                "the file is truncated or corrupt, or uses a codec variant the installed plugins cannot decode; "
                + _DICOM_CONVERT_HINT,
            ) from exc
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        if photometric in _MONOCHROME:
            unit = self._display_monochrome(path, ds, pixels)
            if photometric == "MONOCHROME1":
                unit = 1.0 - unit
        else:
            unit = self._display_colour(path, ds, pixels, str(properties.get("photometric_interpretation", "")))
        rows, cols = unit.shape
        return _finish(path, unit), _meta(rows, cols, "dicom", img.meta)

    def _check_deflated(self, path: Path, raw: bytes, meta_start: int) -> None:
        """Refuse a Deflated Explicit VR dataset that inflates beyond ``max_file_bytes`` (zip bomb).

        pydicom inflates the whole dataset in one call, so the bound is checked here first on the same
        bytes: those after the file meta group, which starts at ``meta_start``.
        """
        deflated_uid = DeflatedExplicitVRLittleEndian.encode()
        if deflated_uid not in raw[: meta_start + 4096]:
            return
        start = _deflated_dataset_offset(raw, meta_start)
        if start is None:
            raise RadiographLoadError(
                path, "deflated transfer syntax with a malformed file meta information group", "the file is corrupt"
            )
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflater.decompress(raw[start:], self.limits.max_file_bytes)
        except zlib.error as exc:
            reason = f"deflated dataset cannot be inflated ({exc})"
            raise RadiographLoadError(path, reason, "the file is corrupt") from exc
        if inflater.unconsumed_tail:
            raise RadiographLoadError(
                path,
                f"deflated dataset inflates beyond {self.limits.max_file_bytes} bytes",
                "raise max_pixels if this is a genuine radiograph",
            )

    @staticmethod
    def _transfer_syntax(path: Path, ds: Dataset) -> UID:
        """The transfer syntax from the file meta, or inferred from the encoding when the meta is absent."""
        file_meta = getattr(ds, "file_meta", None)
        uid = _dicom_value(file_meta, path, "TransferSyntaxUID") if file_meta is not None else None
        if uid:
            return UID(str(uid).strip())
        is_implicit, is_little = ds.original_encoding
        if is_implicit is None:
            raise RadiographLoadError(path, "transfer syntax unknown (no file meta information)", "the file is corrupt")
        inferred = (
            ImplicitVRLittleEndian if is_implicit else ExplicitVRLittleEndian if is_little else ExplicitVRBigEndian
        )
        ds.file_meta.TransferSyntaxUID = inferred  # the pixel decoder reads it from here
        return inferred

    def _check_header(self, path: Path, ds: Dataset, transfer_syntax: UID) -> None:
        """Refuse everything that cannot (or must not) be decoded, from the header alone."""
        if "PixelData" not in ds:
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
                raise RadiographLoadError(
                    path, "floating-point pixel data (a parametric map?) is not a radiograph", "export it as an image"
                )
            sop_class = _dicom_text(ds, "SOPClassUID") or _dicom_text(ds.file_meta, "MediaStorageSOPClassUID")
            kind = UID(sop_class).name if sop_class else "unknown"
            looks_like_image = "Rows" in ds or "Image" in kind or len(ds) == 0
            raise RadiographLoadError(
                path,
                f"DICOM object has no pixel data (SOP class: {kind})",
                "the file looks truncated: re-export or re-download it"
                if looks_like_image
                else "only image objects can be read; reports, plans and other non-image objects belong elsewhere",
            )
        try:
            decoder = get_decoder(transfer_syntax)
        except NotImplementedError as exc:
            reason = f"transfer syntax {transfer_syntax.name} ({transfer_syntax}) has no pixel decoder"
            raise RadiographLoadError(path, reason, _DICOM_CONVERT_HINT) from exc
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies)
            raise RadiographLoadError(
                path,
                f"no installed plugin decodes transfer syntax {transfer_syntax.name}",
                f"install one of ({missing}) or {_DICOM_CONVERT_HINT}",
            )
        photometric = str(_dicom_value(ds, path, "PhotometricInterpretation") or "").strip().upper()
        if photometric not in _MONOCHROME + _COLOUR:
            raise RadiographLoadError(
                path, f"Photometric Interpretation '{photometric}' is not supported", "export the image as grey or RGB"
            )
        frames = _dicom_int(ds, path, "NumberOfFrames", default=1)
        if frames != 1:
            raise RadiographLoadError(
                path,
                f"DICOM image has {frames} frames; a radiograph is one frame",
                "extract the frame you want into its own file (e.g. with dcmtk or pydicom)",
            )
        samples = _dicom_int(ds, path, "SamplesPerPixel")
        expected_samples = 1 if photometric in _MONOCHROME + ("PALETTE COLOR",) else 3
        if samples != expected_samples:
            reason = f"Samples per Pixel is {samples}, but {photometric} needs {expected_samples}"
            raise RadiographLoadError(path, reason, "the file is corrupt")
        bits_allocated = _dicom_int(ds, path, "BitsAllocated")
        bits_stored = _dicom_int(ds, path, "BitsStored")
        if bits_allocated not in (8, 16, 32) or not 1 <= bits_stored <= bits_allocated:
            raise RadiographLoadError(
                path,
                f"Bits Allocated {bits_allocated} / Bits Stored {bits_stored} is not supported "
                "(8, 16 or 32 bits allocated, stored <= allocated)",
                "binary (1-bit) objects such as segmentations are not radiographs",
            )
        rows = _dicom_int(ds, path, "Rows")
        cols = _dicom_int(ds, path, "Columns")
        self.limits.check(path, rows, cols)
        if transfer_syntax.is_encapsulated:
            self._check_codestream(path, ds, transfer_syntax, rows, cols, samples)

    @staticmethod
    def _check_codestream(path: Path, ds: Dataset, transfer_syntax: UID, rows: int, cols: int, samples: int) -> None:
        """Refuse a JPEG / JPEG-LS / JPEG 2000 frame whose own size differs from the header's.

        The codecs allocate what the codestream declares, so a corrupt codestream header could otherwise
        request far more memory than the DICOM header (already checked against the limits) allows.
        """
        if not (transfer_syntax in JPEGTransferSyntaxes or transfer_syntax in JPEGLSTransferSyntaxes
                or transfer_syntax in JPEG2000TransferSyntaxes):
            return
        try:
            frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        except MemoryError:
            raise
        except Exception as exc:
            raise RadiographLoadError(
                path, f"encapsulated pixel data is malformed ({type(exc).__name__}: {exc})", "the file is corrupt"
            ) from exc
        parse = _j2k_frame_header if transfer_syntax in JPEG2000TransferSyntaxes else _jpeg_frame_header
        found = parse(frame)
        if found != (rows, cols, samples):
            described = "unreadable" if found is None else "{} x {} x {}".format(*found)
            raise RadiographLoadError(
                path,
                f"compressed frame header ({described}) disagrees with the DICOM header ({rows} x {cols} x {samples})",
                "the file is corrupt",
            )

    @staticmethod
    def _display_monochrome(path: Path, ds: Dataset, pixels: np.ndarray) -> np.ndarray:
        """Modality LUT, then VOI LUT or window or pixel range -> ``[0, 1]`` (before MONOCHROME1 inversion)."""
        try:
            values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
        except MemoryError:
            raise
        except Exception as exc:
            raise RadiographLoadError(
                path, f"Modality LUT / rescale cannot be applied ({type(exc).__name__}: {exc})", "the file is corrupt"
            ) from exc
        if not np.isfinite(values).all():
            raise RadiographLoadError(path, "Rescale Slope/Intercept give non-finite values", "the file is corrupt")
        for voi in (_voi_lut_unit, _window_unit):
            unit = voi(values, ds, path)
            if unit is not None:
                return unit
        return _range_unit(values)

    @staticmethod
    def _display_colour(path: Path, ds: Dataset, pixels: np.ndarray, decoded_photometric: str) -> np.ndarray:
        """Palette or RGB pixels -> luma in ``[0, 1]``."""
        if decoded_photometric.strip().upper() == "PALETTE COLOR":
            try:
                rgb = apply_color_lut(pixels, ds)
            except MemoryError:
                raise
            except Exception as exc:
                raise RadiographLoadError(
                    path, f"palette cannot be applied ({type(exc).__name__}: {exc})", "the file is corrupt"
                ) from exc
            return _luma(rgb) / np.iinfo(rgb.dtype).max
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise RadiographLoadError(path, f"colour pixel data decoded to shape {pixels.shape}", "the file is corrupt")
        return _luma(pixels) / (2 ** int(ds.BitsStored) - 1)


# ----------------------------------------------------------------------------------------- PNG / JPEG

# PIL mode -> mode converted to before reading the array (None: read as is)
_PIL_MODES: dict[str, str | None] = {
    "1": "L",
    "L": None,
    "LA": "L",
    "P": "RGB",
    "PA": "RGB",
    "RGB": None,
    "RGBA": "RGB",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "I;16": None,
    "I;16B": None,
    "I;16L": None,
}


@dataclass
class RasterImage:
    """An opened PNG/JPEG whose header passed the checks, in a mode the array conversion understands."""

    path: Path
    image: Image.Image
    source_format: str


class PILRadiographReader(PILReader):
    """Read one PNG or JPEG as displayed: ``H x W`` ``float32`` in ``[0, 1]``, rows first.

    Grey images are divided by their dtype maximum (255, or 65535 for 16-bit PNG). Palette, RGB, RGBA
    and CMYK become RGB (alpha dropped) and then BT.601 luma / 255. The size is checked from the header
    before the pixels are decoded. A multi-image file (APNG, MPO) gives its first image.

    Args:
        max_pixels: see :class:`ImageLimits`.
        min_side: see :class:`ImageLimits`.
        max_aspect_ratio: see :class:`ImageLimits`.
    """

    def __init__(self, max_pixels: int = 50_000_000, min_side: int = 16, max_aspect_ratio: float = 4.0) -> None:
        super().__init__(reverse_indexing=False)
        self.limits = ImageLimits(max_pixels, min_side, max_aspect_ratio)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True if every file is named ``.png``, ``.jpg`` or ``.jpeg``."""
        return all(str(name).lower().endswith((".png", ".jpg", ".jpeg")) for name in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> RasterImage:
        """Open one file lazily, check its header size, then convert its mode (this decodes).

        Raises:
            RadiographLoadError: not a PNG/JPEG, unsupported pixel mode, size outside the limits, or
                the pixels cannot be decoded.
        """
        path = _single_path(data, type(self).__name__)
        try:
            image = super().read(path, **kwargs)
        except Image.DecompressionBombError as exc:  # PIL's own header check, above ~179 M pixels
            raise RadiographLoadError(
                path, f"image is larger than max_pixels={self.limits.max_pixels} ({exc})", "downsample it first"
            ) from exc
        except MemoryError:
            raise
        except Exception as exc:  # PIL raises many types (SyntaxError, struct.error...) on corrupt headers
            raise RadiographLoadError(
                path, f"image header cannot be read ({type(exc).__name__}: {exc})", "the file is truncated or corrupt"
            ) from exc
        try:
            if image.format not in ("PNG", "JPEG", "MPO"):
                raise RadiographLoadError(path, f"{image.format} images are not supported", "convert it to PNG")
            if image.mode not in _PIL_MODES:
                raise RadiographLoadError(
                    path, f"pixel mode {image.mode} is not supported", "save it as 8/16-bit grey or RGB"
                )
            self.limits.check(path, image.height, image.width)
            source_format = "png" if image.format == "PNG" else "jpeg"
            target = _PIL_MODES[image.mode]
            if target is None:
                return RasterImage(path, image, source_format)
            converted = image.convert(target)
        except MemoryError:
            image.close()
            raise
        except RadiographLoadError:
            image.close()
            raise
        except Exception as exc:  # decoding happens in convert(): corrupt data surfaces here
            image.close()
            raise RadiographLoadError(
                path, f"pixels cannot be decoded ({type(exc).__name__}: {exc})", "the file is truncated or corrupt"
            ) from exc
        image.close()
        return RasterImage(path, converted, source_format)

    def get_data(self, img: RasterImage) -> tuple[np.ndarray, dict]:
        """Decode: ``(H x W float32 in [0, 1], meta)``.

        Raises:
            RadiographLoadError: the pixels cannot be decoded, or the image is constant.
        """
        if not isinstance(img, RasterImage):
            raise TypeError(f"{type(self).__name__}.get_data expects a RasterImage from read(), got {type(img)}.")
        try:
            pixels = np.asarray(super().get_data(img.image)[0])
        except MemoryError:
            raise
        except Exception as exc:  # truncated or corrupt compressed data surfaces when decoding
            raise RadiographLoadError(
                img.path, f"pixels cannot be decoded ({type(exc).__name__}: {exc})", "the file is truncated or corrupt"
            ) from exc
        finally:
            img.image.close()
        scale = 1.0 if pixels.dtype == np.bool_ else float(np.iinfo(pixels.dtype).max)
        grey = _luma(pixels) if pixels.ndim == 3 else pixels.astype(np.float64)
        rows, cols = grey.shape[:2]
        return _finish(img.path, grey / scale), _meta(rows, cols, img.source_format)


# ---------------------------------------------------------------------------------------------- NIfTI


class NibabelRadiographReader(NibabelReader):
    """Read one 2-D NIfTI-1/2 image (``.nii`` or ``.nii.gz``): ``H x W`` ``float32`` in ``[0, 1]``, rows first.

    Voxel index ``(i, j)`` is (column, row), as NIfTI viewers and MONAI's PNG readers/writers index
    images, so the array is transposed; the affine is not applied (no reorientation). Trailing singleton
    dimensions are dropped; anything that is not 2-D after that is refused. Intensities (after the
    header's scl_slope/scl_inter) are min-max scaled over the finite values; NaN and -inf become 0,
    +inf becomes 1 (logged). The file is parsed from memory (gzip inflated with a bound), so corrupt
    length fields cannot cause large allocations.

    Args:
        max_pixels: see :class:`ImageLimits`.
        min_side: see :class:`ImageLimits`.
        max_aspect_ratio: see :class:`ImageLimits`.
    """

    def __init__(self, max_pixels: int = 50_000_000, min_side: int = 16, max_aspect_ratio: float = 4.0) -> None:
        super().__init__()
        self.limits = ImageLimits(max_pixels, min_side, max_aspect_ratio)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> nib.Nifti1Image:
        """Parse one NIfTI header (voxels are read in :meth:`get_data`) and check shape, type and size.

        Raises:
            RadiographLoadError: unreadable or oversized file, not 2-D, non-scalar voxels, or size outside
                the limits.
        """
        path = _single_path(data, type(self).__name__)
        raw = _read_bounded(path, self.limits)
        if raw.startswith(_GZIP_SIGNATURE):
            raw = self._gunzip(path, raw)
        self.filenames = (path,)  # NibabelReader.get_data pairs images with these
        try:
            image_class = nib.Nifti2Image if raw[4:8] == b"n+2\x00" else nib.Nifti1Image
            image = image_class.from_bytes(raw)
            shape = tuple(int(s) for s in image.shape)
            dtype = np.dtype(image.get_data_dtype())
        except MemoryError:
            raise
        except Exception as exc:  # nibabel raises many types on corrupt headers
            raise RadiographLoadError(
                path, f"NIfTI header cannot be read ({type(exc).__name__}: {exc})", "the file is truncated or corrupt"
            ) from exc
        if dtype.fields is not None or dtype.kind not in "biuf":
            raise RadiographLoadError(path, f"NIfTI voxel type {dtype} is not a scalar", "save a grey image")
        plane = self._plane_shape(shape)
        if plane is None:
            raise RadiographLoadError(
                path, f"NIfTI image has shape {shape}; only 2-D images are read", "save the radiograph as one 2-D image"
            )
        self.limits.check(path, rows=plane[1], cols=plane[0])
        return image

    def _gunzip(self, path: Path, raw: bytes) -> bytes:
        """Decompress a ``.nii.gz`` in memory, refusing more than ``max_file_bytes`` of output."""
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip container
        try:
            content = inflater.decompress(raw, self.limits.max_file_bytes)
        except zlib.error as exc:
            reason = f"gzip data is corrupt ({exc})"
            raise RadiographLoadError(path, reason, "the file is truncated or corrupt") from exc
        if inflater.unconsumed_tail:
            raise RadiographLoadError(
                path,
                f"gzip content is larger than the {self.limits.max_file_bytes} bytes allowed",
                "raise max_pixels if this is a genuine radiograph",
            )
        return content

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Read the voxels: ``(H x W float32 in [0, 1], meta)``.

        Raises:
            RadiographLoadError: voxels unreadable, none finite, or the image is constant.
        """
        path = Path(self.filenames[0]) if getattr(self, "filenames", None) else Path("<nifti>")
        try:
            voxels = np.asarray(super().get_data(img)[0], dtype=np.float64)
        except MemoryError:
            raise
        except Exception as exc:  # truncated voxel data surfaces here
            raise RadiographLoadError(
                path, f"NIfTI voxels cannot be read ({type(exc).__name__}: {exc})", "the file is truncated or corrupt"
            ) from exc
        plane = self._plane_shape(voxels.shape)
        if plane is None:  # read() checked the header shape: the data must agree
            raise RadiographLoadError(path, f"NIfTI voxel array has shape {voxels.shape}", "the file is corrupt")
        grey = voxels.reshape(plane).T
        finite = np.isfinite(grey)
        if not finite.any():
            raise RadiographLoadError(path, "NIfTI image has no finite values", "the file holds no image content")
        unit = _range_unit(grey[finite])
        out = np.empty_like(grey)
        out[finite] = unit
        if not finite.all():
            logger.warning(
                "%s: %d non-finite voxels set to 0 (NaN, -inf) or 1 (+inf).", path, int((~finite).sum())
            )
            out[~finite] = np.where(np.isposinf(grey[~finite]), 1.0, 0.0)
        rows, cols = out.shape
        return _finish(path, out), _meta(rows, cols, "nifti")

    @staticmethod
    def _plane_shape(shape: Sequence[int]) -> tuple[int, int] | None:
        """``(I, J)`` of a shape that is 2-D after dropping trailing singleton dimensions, else ``None``."""
        dims = list(shape)
        while len(dims) > 2 and dims[-1] == 1:
            dims.pop()
        return (dims[0], dims[1]) if len(dims) == 2 else None
