"""PNG/JPEG (through MONAI's ``PILReader``) and 2-D NIfTI (through MONAI's ``NibabelReader``) radiographs as
``H x W`` ``float32`` arrays in ``[0, 1]``, sizes checked from the header first (``docs/io.md``)."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import PathLike
from monai.data import NibabelReader, PILReader
from monai.utils import ensure_tuple
from PIL import Image

from .formats import (
    GZIP_SIGNATURE,
    LimitedReader,
    RadiographLoadError,
    finish_unit,
    inflate_bounded,
    luma,
    read_bounded,
    reader_meta,
    scale_finite,
    single_path,
)

__all__ = ["NibabelRadiographReader", "PILRadiographReader", "RasterImage"]

logger = logging.getLogger(__name__)


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


class PILRadiographReader(LimitedReader, PILReader):
    """Read one PNG or JPEG as displayed: ``H x W`` ``float32`` in ``[0, 1]``, rows first.

    Grey images are divided by their dtype maximum (255, or 65535 for 16-bit PNG). Palette, RGB, RGBA
    and CMYK become RGB (alpha dropped) and then BT.601 luma / 255. The size is checked from the header
    before the pixels are decoded. A multi-image file (APNG, MPO) gives its first image.

    Args: the size limits of :class:`~scripts.data.formats.LimitedReader`.
    """

    def __init__(self, max_pixels: int = 50_000_000, min_side: int = 16, max_aspect_ratio: float = 4.0) -> None:
        super().__init__(max_pixels, min_side, max_aspect_ratio, reverse_indexing=False)  # rows first

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True if every file is named ``.png``, ``.jpg`` or ``.jpeg``."""
        return all(str(name).lower().endswith((".png", ".jpg", ".jpeg")) for name in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> RasterImage:
        """Open one file lazily, check its header size, then convert its mode (this decodes).

        Raises:
            RadiographLoadError: not a PNG/JPEG, unsupported pixel mode, size outside the limits, or
                the pixels cannot be decoded.
        """
        path = single_path(data, type(self).__name__)
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
        grey = luma(pixels) if pixels.ndim == 3 else pixels.astype(np.float64)
        rows, cols = grey.shape[:2]
        return finish_unit(img.path, grey / scale), reader_meta(rows, cols, img.source_format)


# ---------------------------------------------------------------------------------------------- NIfTI


class NibabelRadiographReader(LimitedReader, NibabelReader):
    """Read one 2-D NIfTI-1/2 image (``.nii`` or ``.nii.gz``): ``H x W`` ``float32`` in ``[0, 1]``, rows first.

    Voxel index ``(i, j)`` is (column, row), as NIfTI viewers and MONAI's PNG readers/writers index
    images, so the array is transposed; the affine is not applied (no reorientation). Trailing singleton
    dimensions are dropped; anything that is not 2-D after that is refused. Intensities (after the
    header's scl_slope/scl_inter) are min-max scaled over the finite values; NaN and -inf become 0,
    +inf becomes 1 (logged). The file is parsed from memory (gzip inflated with a bound), so corrupt
    length fields cannot cause large allocations.

    Args: the size limits of :class:`~scripts.data.formats.LimitedReader`.
    """

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> nib.Nifti1Image:
        """Parse one NIfTI header (voxels are read in :meth:`get_data`) and check shape, type and size.

        Raises:
            RadiographLoadError: unreadable or oversized file, not 2-D, non-scalar voxels, or size outside
                the limits.
        """
        path = single_path(data, type(self).__name__)
        raw = read_bounded(path, self.limits)
        if raw.startswith(GZIP_SIGNATURE):
            raw = inflate_bounded(path, raw, 16 + zlib.MAX_WBITS, self.limits, "gzip content")  # in memory, bounded
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
        out = scale_finite(path, voxels.reshape(plane).T)
        rows, cols = out.shape
        return finish_unit(path, out), reader_meta(rows, cols, "nifti")

    @staticmethod
    def _plane_shape(shape: Sequence[int]) -> tuple[int, int] | None:
        """``(I, J)`` of a shape that is 2-D after dropping trailing singleton dimensions, else ``None``."""
        dims = list(shape)
        while len(dims) > 2 and dims[-1] == 1:
            dims.pop()
        return (dims[0], dims[1]) if len(dims) == 2 else None
