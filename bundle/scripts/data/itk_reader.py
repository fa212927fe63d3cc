"""NRRD and MetaImage radiographs through ITK: ``H x W`` ``float32`` in ``[0, 1]``, the size checked from the header
before the pixels are read (``docs/io.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import itk
import numpy as np
from monai.config import PathLike
from monai.data import ImageReader
from monai.utils import ensure_tuple

from .formats import (
    ITK_SUFFIXES,
    LimitedReader,
    RadiographLoadError,
    finish_unit,
    reader_meta,
    scale_finite,
    single_path,
)

__all__ = ["ITKRadiographReader"]


class ITKRadiographReader(LimitedReader, ImageReader):
    """Read one 2-D NRRD (``.nrrd``, ``.nhdr``) or MetaImage (``.mha``, ``.mhd``) image with ITK.

    The header is read first (``itk.ImageIOFactory``), and an image that is not 2-D (after dropping trailing
    singleton dimensions), has more than one component, or is outside the size limits is refused before any
    pixel is read. Rows are ITK's second index, so the array looks like the PNG of the same image; spacing,
    origin and direction are not applied (no resampling). Intensities are min-max scaled over the finite values;
    NaN and -inf become 0, +inf becomes 1.

    Args: the size limits of :class:`~scripts.data.formats.LimitedReader`.
    """

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True if every file is named with one of ``.nrrd .nhdr .mha .mhd``."""
        return all(str(name).lower().endswith(ITK_SUFFIXES) for name in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> tuple[Path, Any]:
        """Check the header, then read the pixels as float32: ``(path, itk image)``.

        Raises:
            RadiographLoadError: ITK cannot read the file, or the image is not one 2-D grey plane within the limits.
        """
        path = single_path(data, type(self).__name__)
        image_io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
        if image_io is None:
            raise RadiographLoadError(path, "ITK finds no reader for it", "the file is truncated or corrupt")
        image_io.SetFileName(str(path))
        try:
            image_io.ReadImageInformation()
        except RuntimeError as exc:
            reason = f"header cannot be read ({exc})"
            raise RadiographLoadError(path, reason, "the file is truncated or corrupt") from exc
        size = [int(image_io.GetDimensions(i)) for i in range(image_io.GetNumberOfDimensions())]
        while len(size) > 2 and size[-1] == 1:
            size.pop()
        if len(size) != 2:
            raise RadiographLoadError(path, f"image has size {size}; only 2-D images are read", "save one 2-D image")
        if image_io.GetNumberOfComponents() != 1:
            raise RadiographLoadError(
                path, f"pixels have {image_io.GetNumberOfComponents()} components, expected 1", "save a grey image"
            )
        self.limits.check(path, rows=size[1], cols=size[0])
        try:
            image = itk.imread(str(path), itk.F)
        except RuntimeError as exc:
            reason = f"pixels cannot be read ({exc})"
            raise RadiographLoadError(path, reason, "the file is truncated or corrupt") from exc
        return path, image

    def get_data(self, img: tuple[Path, Any]) -> tuple[np.ndarray, dict]:
        """``(H x W float32 in [0, 1], meta)`` of an image from :meth:`read`.

        Raises:
            RadiographLoadError: the pixels have no finite value, or the image is constant.
        """
        path, image = img
        pixels = np.asarray(itk.array_view_from_image(image), dtype=np.float64)
        grey = pixels.reshape(pixels.shape[-2:])  # ITK's numpy order: trailing singletons lead, rows before columns
        rows, cols = grey.shape
        return finish_unit(path, scale_finite(path, grey)), reader_meta(rows, cols, "itk")
