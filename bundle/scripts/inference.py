"""Inputs of the inference workflow: the files to score, fault-tolerant loading, and the postprocessing that turns
the detector's outputs into a named anomaly map at the source's size.

``configs/inference.json`` runs MONAI's ``SupervisedEvaluator`` over a folder (or datalist) of PNG, JPEG,
DICOM and NIfTI files with the :class:`~scripts.detector.AnomalyDetector` as its network:

- :func:`list_inputs` lists the files; :class:`LoadRadiographOrErrord` loads each one, or on failure
  returns a placeholder image and the reason, so one bad file does not stop the run;
- :class:`AutocastInferer` runs the detector under mixed precision on any device when ``amp`` is set;
- postprocessing: :class:`SplitOutputd` names the network outputs, :class:`ResizeToSourced` brings the
  anomaly map back to the source's original size;
- the results are written by the handlers of :mod:`scripts.outputs.writers`.

Usage and outputs: ``bundle/docs/inference.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, load_decathlon_datalist
from monai.inferers import Inferer
from monai.transforms import MapTransform, Resize
from monai.utils import ImageMetaKey, MetaKeys, convert_to_tensor

from .data.datalist import is_image_file
from .data.formats import DICOM_META_KEYWORDS, RadiographLoadError
from .data.transforms import LoadRadiographd
from .engines import autocast_context

__all__ = ["choose_input", "list_inputs", "LoadRadiographOrErrord", "AutocastInferer", "SplitOutputd", "ResizeToSourced"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- inputs


def choose_input(input_dir: str | os.PathLike, dataset_dir: str | os.PathLike, default: str | os.PathLike) -> str:
    """What ``inference.json`` scores: ``--input_dir`` or its MONAI-standard alias ``--dataset_dir``, else ``default``.

    Raises:
        ValueError: both are given and name different inputs (neither silently wins).
    """
    given = [str(v) for v in (input_dir, dataset_dir) if str(v)]
    if len(given) == 2 and Path(given[0]).resolve() != Path(given[1]).resolve():
        raise ValueError(f"--input_dir {given[0]} and --dataset_dir {given[1]} name different inputs: pass one of them "
                         "(--dataset_dir is an alias of --input_dir in inference).")
    return given[0] if given else str(default)


def list_inputs(
    dataset_dir: str | os.PathLike,
    exclude: Iterable[str | os.PathLike] = (),
    datalist_key: str = "test",
) -> list[dict[str, str]]:
    """The images to score, as ``[{"image": path}, ...]``.

    Args:
        dataset_dir: a folder, scanned recursively for the files :func:`scripts.data.datalist.is_image_file` accepts
            (sorted, so the order is reproducible; the other files are named in a warning, and a broken link or a
            link to a device with an image suffix is listed, so that the loader reports it); or a datalist JSON,
            whose ``datalist_key`` list gives the images (paths relative to the JSON file or absolute); or a single
            image file.
        exclude: folders whose files are never listed (the output folder, so earlier results are not
            scored when it lies inside the input folder).
        datalist_key: the list of a datalist JSON to read.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist.
        ValueError: the datalist cannot be read, or no image was found.
    """
    root = Path(dataset_dir)
    if not root.exists():
        raise FileNotFoundError(
            f"input {root} does not exist: pass '--input_dir <folder of images>' or a datalist JSON file."
        )
    if root.is_dir():
        excluded = [Path(e).resolve() for e in exclude]
        files = [p for p in sorted(root.rglob("*"))
                 if not p.is_dir() and not any(p.resolve().is_relative_to(e) for e in excluded)]
        taken = [is_image_file(p) for p in files]
        paths = [str(p) for p, image in zip(files, taken) if image]
        _report_ignored(root, [p for p, image in zip(files, taken) if not image])
    elif root.name.lower().endswith(".json"):
        paths = _datalist_images(root, datalist_key)
    else:
        paths = [str(root)]
    unique = list(dict.fromkeys(paths))
    if len(unique) < len(paths):
        logger.warning("%s lists %d images more than once; each is scored once.", root, len(paths) - len(unique))
    if not unique:
        raise ValueError(
            f"no images found in {root}: supported are DICOM, PNG, JPEG, NIfTI, NRRD and MetaImage files "
            "(see bundle/docs/io.md)."
        )
    logger.info("%d images to score from %s", len(unique), root)
    return [{"image": p} for p in unique]


def _report_ignored(root: Path, ignored: list[Path]) -> None:
    """Log the files of a scanned folder that are not offered to the loader (hidden files, other formats)."""
    if ignored:
        names = ", ".join(str(p.relative_to(root)) for p in ignored[:5])
        logger.warning("%s: %d files are not images this bundle reads and are not scored: %s%s", root, len(ignored),
                       names, ", ..." if len(ignored) > 5 else "")


def _datalist_images(path: Path, key: str) -> list[str]:
    """The ``image`` paths of the ``key`` list of a datalist JSON."""
    try:
        items = load_decathlon_datalist(path, is_segmentation=False, data_list_key=key)
    except (ValueError, IndexError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"datalist {path} has no usable '{key}' list ({exc}); it must map '{key}' to a list of "
            f'{{"image": path}} items or of paths (choose the list with --datalist_key).'
        ) from exc
    images = []
    for i, item in enumerate(items):
        image = item.get("image") if isinstance(item, Mapping) else None
        if not isinstance(image, (str, os.PathLike)):
            raise ValueError(f"datalist {path}: item {i} of '{key}' has no 'image' path: {item!r}.")
        images.append(str(image))
    return images


class LoadRadiographOrErrord(MapTransform):
    """:class:`scripts.data.transforms.LoadRadiographd` that reports a file it cannot load instead of raising.

    On success ``d[error_key]`` is ``""``. On failure each key gets a placeholder: a ``1 x size x size``
    zero MetaTensor whose metadata has the same keys as a loaded image (so batches still collate and the
    rest of the preprocessing runs), and ``d[error_key]`` holds the reason, which names the file.

    Args:
        keys: keys of the paths to load.
        error_key: where the failure reason goes.
        placeholder_size: side of the placeholder image.
        kwargs: passed to :class:`scripts.data.transforms.LoadRadiographd` (size limits).
    """

    def __init__(
        self, keys: KeysCollection = "image", error_key: str = "error", placeholder_size: int = 16, **kwargs: Any
    ) -> None:
        super().__init__(keys)
        self.loader = LoadRadiographd(keys, **kwargs)
        self.error_key = error_key
        self.placeholder_size = placeholder_size

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        try:
            d = self.loader(data)
            d[self.error_key] = ""
            return d
        except RadiographLoadError as exc:
            reason = str(exc)
        except Exception as exc:  # a reader bug on one odd file must not stop a whole folder
            names = ", ".join(str(data.get(k)) for k in self.keys)
            logger.exception("unexpected error while loading %s", names)
            reason = f"cannot load radiograph '{names}': unexpected {type(exc).__name__}: {exc}."
        logger.warning("skipped: %s", reason)
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._placeholder(d[key])
        d[self.error_key] = reason
        return d

    def _placeholder(self, path: Any) -> MetaTensor:
        size = self.placeholder_size
        meta = {
            ImageMetaKey.FILENAME_OR_OBJ: str(path),
            MetaKeys.SPATIAL_SHAPE: np.asarray([size, size]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            "source_format": "",
            "dicom": dict.fromkeys(DICOM_META_KEYWORDS, ""),
        }
        return MetaTensor(torch.zeros(1, size, size), meta=meta)


# ------------------------------------------------------------------------------------------ postprocessing


class AutocastInferer(Inferer):
    """``network(inputs)`` under :func:`~scripts.engines.autocast_context` (bf16 on the CPU and on GPUs that support
    it, fp16 otherwise) when ``amp``, floating outputs returned in fp32 for the writers.

    MONAI's ``SupervisedEvaluator`` applies its own ``amp`` as CUDA autocast only, so on the CPU it changed nothing;
    the inference config passes ``amp`` here instead and leaves the evaluator's off.

    Args:
        amp: mixed precision; may be the ``"true"``/``"false"`` string of the command line.
    """

    def __init__(self, amp: bool | str = False) -> None:
        super().__init__()
        self.amp = amp

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``inputs``: ``B x 1 x H x W``; returns what ``network`` returns (the detector: ``(B x 1 x H x W map, B
        scores)``)."""
        with autocast_context(inputs.device, self.amp):
            outputs = network(inputs, *args, **kwargs)
        if isinstance(outputs, (tuple, list)):
            return type(outputs)(o.float() if torch.is_floating_point(o) else o for o in outputs)
        return outputs.float() if torch.is_floating_point(outputs) else outputs


class SplitOutputd(MapTransform):
    """Split a network output tuple ``d[key]`` into named entries (and drop ``d[key]``).

    The detector returns ``(anomaly_map, score)``; after decollation one item's prediction is
    ``[1 x H x W map, 0-d score]``, which becomes ``d["anomaly_map"]`` and ``d["score"]``.

    Args:
        keys: key of the output tuple (``"pred"``).
        names: one name per output, in order (``metadata.json`` ``network_data_format.outputs``).
    """

    def __init__(self, keys: KeysCollection = "pred", names: Sequence[str] = ("anomaly_map", "score")) -> None:
        super().__init__(keys)
        self.names = tuple(names)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            outputs = d.pop(key)
            if not isinstance(outputs, (list, tuple)) or len(outputs) != len(self.names):
                raise ValueError(f"'{key}' must hold {len(self.names)} outputs {self.names}, got {type(outputs)}.")
            d.update(zip(self.names, outputs))
        return d


class ResizeToSourced(MapTransform):
    """Resize ``1 x h x w`` maps to the original ``H x W`` of the source image ``d[ref_key]``.

    The size comes from the reference's ``spatial_shape`` metadata (set by the loader before any resizing);
    bilinear interpolation gives a smooth map at the source's pixel grid, rows first like the displayed image.

    Args:
        keys: keys of the maps.
        ref_key: key of the preprocessed source image (a MetaTensor).
        mode: interpolation mode of :class:`monai.transforms.Resize`.
    """

    def __init__(self, keys: KeysCollection = "anomaly_map", ref_key: str = "image", mode: str = "bilinear") -> None:
        super().__init__(keys)
        self.ref_key = ref_key
        self.mode = mode

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shape = tuple(int(s) for s in d[self.ref_key].meta[MetaKeys.SPATIAL_SHAPE])
        resize = Resize(spatial_size=shape, mode=self.mode, anti_aliasing=False)
        for key in self.key_iterator(d):
            d[key] = resize(convert_to_tensor(d[key], dtype=torch.float32, track_meta=False))
        return d
