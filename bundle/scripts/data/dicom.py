"""DICOM radiographs as a viewer displays them: decode, Modality LUT, VOI LUT or window, MONOCHROME1
inversion, colour to grey; sizes checked from the header before any pixel data is decoded (``docs/io.md``)."""

from __future__ import annotations

import io
import logging
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.config import PathLike
from monai.data import ImageReader
from monai.utils import ensure_tuple
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

from .formats import (
    DICOM_META_KEYWORDS,
    DICOM_SUFFIXES,
    LimitedReader,
    RadiographLoadError,
    finish_unit,
    inflate_bounded,
    luma,
    range_unit,
    read_bounded,
    read_head,
    reader_meta,
    single_path,
)

__all__ = ["DicomImage", "DicomRadiographReader"]

logger = logging.getLogger(__name__)

_DICOM_CONVERT_HINT = (
    "convert it to an uncompressed transfer syntax, e.g. `dcmdjpeg in.dcm out.dcm` (dcmtk) "
    "or `gdcmconv --raw in.dcm out.dcm`"
)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
# JPEG (ISO 10918-1) start-of-frame markers, plus SOF55 of JPEG-LS (ISO 14495-1)
_JPEG_SOF_MARKERS = frozenset(
    [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7]
)
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xDA)])
# explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset(
    vr.encode() for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)



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


class DicomRadiographReader(LimitedReader, ImageReader):
    """Read one DICOM image as displayed: ``H x W`` ``float32`` in ``[0, 1]``, rows first.

    Pipeline (PS3.3 C.11 / PS3.4 N.2): decode the first (only) frame with pydicom's decoders (compressed
    transfer syntaxes through the installed pylibjpeg plugins); for MONOCHROME1/2 apply the Modality LUT
    or rescale, then the first VOI LUT of the VOI LUT Sequence (output ``0 .. 2**bits - 1`` -> ``[0, 1]``),
    else the first window (its output range -> ``[0, 1]``), else the pixel value range; invert
    MONOCHROME1. Colour (RGB, YBR, palette) becomes BT.601 luma of the values divided by their maximum
    (``2**BitsStored - 1``, or the palette's entry maximum).

    Refused, with :class:`RadiographLoadError`, before any pixel decoding: unreadable files, files over
    :attr:`~scripts.data.formats.ImageLimits.max_file_bytes`, objects without pixel data (SR, RT plans, ...),
    floating-point
    pixel data, multi-frame images, transfer syntaxes without an installed decoder, sizes outside
    ``limits``, and compressed frames whose own header disagrees with the DICOM header.

    Args: the size limits of :class:`~scripts.data.formats.LimitedReader`.
    """

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True if every file is named ``.dcm``/``.dicom`` or starts with the DICOM preamble."""
        for name in ensure_tuple(filename):
            path = Path(name)
            if not path.name.lower().endswith(DICOM_SUFFIXES):
                try:
                    if read_head(path, 132)[128:132] != b"DICM":
                        return False
                except OSError:
                    return False
        return True

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> DicomImage:
        """Parse the header of one DICOM file and check it; the pixels are decoded in :meth:`get_data`.

        Raises:
            RadiographLoadError: see the class docstring.
        """
        path = single_path(data, type(self).__name__)
        raw = read_bounded(path, self.limits)
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
        return finish_unit(path, unit), reader_meta(rows, cols, "dicom", img.meta)

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
        inflate_bounded(path, raw[start:], -zlib.MAX_WBITS, self.limits, "deflated dataset")

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
        return range_unit(values)

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
            return luma(rgb) / np.iinfo(rgb.dtype).max
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise RadiographLoadError(path, f"colour pixel data decoded to shape {pixels.shape}", "the file is corrupt")
        return luma(pixels) / (2 ** int(ds.BitsStored) - 1)


