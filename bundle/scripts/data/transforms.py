"""Loading transforms for radiographs: any supported file -> ``1 x H x W`` ``float32`` MetaTensor in ``[0, 1]``.

The bundle's preprocessing is ``LoadRadiographd -> Resized -> (training) RandAffined -> EnsureTyped``.
:class:`LoadRadiographd` detects the format of each file by its content and loads it through
:class:`monai.transforms.LoadImage` with the matching reader (:mod:`scripts.data.dicom`, :mod:`scripts.data.raster`,
:mod:`scripts.data.itk_reader`), which applies
the display pipeline (DICOM VOI/window, MONOCHROME1 inversion, colour to grey) and the safety checks.
Rules and the table of accepted and refused inputs: ``bundle/docs/io.md``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, PathLike
from monai.data import ImageReader, MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform
from PIL import Image

from .dicom import DicomRadiographReader
from .formats import RadiographLoadError, detect_format
from .itk_reader import ITKRadiographReader
from .raster import NibabelRadiographReader, PILRadiographReader

__all__ = ["LoadRadiograph", "LoadRadiographd", "LoadMaskd"]


class LoadRadiograph(Transform):
    """Load one radiograph file as displayed: ``1 x H x W`` ``float32`` MetaTensor in ``[0, 1]``.

    The format (DICOM, PNG, JPEG, NIfTI, NRRD, MetaImage) is detected from the content, and the file is read by
    :class:`monai.transforms.LoadImage` with the matching reader. The metadata has the same keys for
    every format: ``filename_or_obj``, ``spatial_shape`` (original ``(H, W)``), ``source_format`` and
    ``dicom`` (identifiers of the source instance as strings; empty strings for non-DICOM files).

    Args:
        max_pixels: largest ``rows * columns`` accepted, checked from the header before decoding.
        min_side: smallest accepted number of rows and of columns.
        max_aspect_ratio: largest accepted ``max(rows, cols) / min(rows, cols)``.

    Raises:
        RadiographLoadError: (on call) for any file that cannot be loaded; the message names the file,
            the reason and a remedy.
    """

    def __init__(self, max_pixels: int = 50_000_000, min_side: int = 16, max_aspect_ratio: float = 4.0) -> None:
        limits = {"max_pixels": max_pixels, "min_side": min_side, "max_aspect_ratio": max_aspect_ratio}
        raster = PILRadiographReader(**limits)
        self.readers: dict[str, ImageReader] = {
            "dicom": DicomRadiographReader(**limits),
            "png": raster,
            "jpeg": raster,
            "nifti": NibabelRadiographReader(**limits),
            "itk": ITKRadiographReader(**limits),
        }
        self.loader = LoadImage(
            reader=[self.readers["nifti"], self.readers["itk"], raster, self.readers["dicom"]],
            image_only=True,
            dtype=np.float32,
            ensure_channel_first=True,
        )

    def __call__(self, filename: PathLike) -> MetaTensor:
        """Load ``filename``; see the class docstring."""
        if not isinstance(filename, str) and not hasattr(filename, "__fspath__"):
            raise TypeError(f"LoadRadiograph expects a file path, got {type(filename).__name__}.")
        source_format = detect_format(filename)
        return self.loader(filename, reader=self.readers[source_format])


class LoadRadiographd(MapTransform):
    """Dictionary version of :class:`LoadRadiograph`: replaces each ``d[key]`` (a path) by its image.

    Args:
        keys: keys of the paths to load.
        max_pixels: see :class:`LoadRadiograph`.
        allow_missing_keys: do not raise if a key is missing.
        min_side: see :class:`LoadRadiograph`.
        max_aspect_ratio: see :class:`LoadRadiograph`.
        extra_hint: appended to the remedy of every load error, e.g. what to do about a bad file of a data set.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        max_pixels: int = 50_000_000,
        allow_missing_keys: bool = False,
        min_side: int = 16,
        max_aspect_ratio: float = 4.0,
        extra_hint: str = "",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadRadiograph(max_pixels=max_pixels, min_side=min_side, max_aspect_ratio=max_aspect_ratio)
        self.extra_hint = extra_hint

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.loader(d[key])
            except RadiographLoadError as e:
                if not self.extra_hint:
                    raise
                hint = f"{e.hint}, {self.extra_hint}" if e.hint else self.extra_hint
                raise RadiographLoadError(e.path, e.reason, hint) from e
        return d


class LoadMaskd(MapTransform):
    """The lesion mask of an item at the model's size, for the pixel-level metrics of evaluation.

    ``d[key]`` is the mask's path (``""`` or absent when the item has none). It becomes ``1 x S x S`` float32, 1 on
    the finding: the mask image (PNG/JPEG grey or NIfTI, the same size and orientation as the radiograph; non-zero
    marks the finding) is area-resized to ``S x S`` like the radiograph and thresholded at half. ``d[known_key]``
    says whether the mask is known: a normal image (``d[label_key] == 0``) without one has an all-zero mask, an
    abnormal image without one has an unknown mask (left out of the pixel metrics).

    Args:
        keys: key of the mask path.
        spatial_size: the model's ``img_size`` ``S``.
        label_key: key of the image label (0 normal, 1 abnormal).
        known_key: where the known flag goes.
    """

    def __init__(self, keys: KeysCollection = "mask", spatial_size: int = 128, label_key: str = "label",
                 known_key: str = "mask_known") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.size = int(spatial_size)
        self.label_key, self.known_key = label_key, known_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            path = d.get(key) or ""
            d[self.known_key] = bool(path) or d.get(self.label_key) == 0
            d[key] = self._load(path) if path else torch.zeros(1, self.size, self.size)
        return d

    def _load(self, path: str) -> torch.Tensor:
        try:
            if path.lower().endswith((".nii", ".nii.gz")):
                mask = np.asarray(nib.load(path).dataobj, dtype=np.float32).squeeze().T  # (column, row) voxels
            else:
                with Image.open(path) as image:
                    mask = np.asarray(image.convert("L"), dtype=np.float32)
        except Exception as exc:  # PIL and nibabel raise many types on bad files
            raise RadiographLoadError(path, f"mask cannot be read ({type(exc).__name__}: {exc})",
                                      "fix or remove the item's 'mask'") from exc
        if mask.ndim != 2:
            raise RadiographLoadError(path, f"mask has shape {mask.shape}, expected rows x columns", "save a 2-D mask")
        resized = F.interpolate(torch.from_numpy(mask > 0).float()[None, None], size=(self.size, self.size),
                                mode="area")
        return (resized[0] >= 0.5).float()
