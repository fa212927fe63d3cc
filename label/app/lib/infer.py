"""MONAI Label inference task: this bundle's anomaly map as a label image, its score and decision as result params.

MONAI Label's generic ``BundleInferTask`` cannot serve this bundle as it is:

- its inferer step keeps ``outputs[0]`` of the network's output, which for this network's
  ``(anomaly_map, score)`` tuple is the batch of maps: the score is lost;
- its writer saves the prediction as it comes, so there is no place for the score, the decision and the threshold;
- without ``models/model.pt`` the task is dropped, so the server would not say that the model needs training;
- it builds the network once, at the ``img_size`` the model file had when the server started, while this bundle
  takes ``img_size`` from ``model.pt`` (a later training may change it).

So :class:`AnomalyInferTask` derives from MONAI Label's ``BasicInferTask`` (the base of ``BundleInferTask``) and
reads the same standard ids of ``configs/inference.json`` that ``BundleInferTask`` reads (``network_def``,
``preprocessing``, ``inferer``, ``postprocessing``), plus ``ckpt_path``, ``overlay_vmax`` and ``model_version``.
Loading, preprocessing, network and postprocessing are the bundle's own, so the map and score equal what
``configs/inference.json`` writes for the same file.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser
from monai.inferers import Inferer
from monai.transforms import Compose

from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.class_utils import unload_module

logger = logging.getLogger(__name__)

LABEL_NAME = "abnormal"
_RASTER_INPUTS = (".png", ".jpg", ".jpeg")


def training_hint(model_name: str) -> str:
    """What to do when there is no model: mark normal images and train (the README's steps)."""
    return (f"mark normal radiographs in the datastore (PUT /datastore/image/info with info "
            f"{{\"finding\": \"normal\"}}, and a few {{\"finding\": \"abnormal\"}} for validation), then "
            f"POST /train/{model_name}; or copy a trained model.pt there")


class RaiseOnLoadError:
    """Stops a request whose image the bundle's fault-tolerant loader could not read.

    ``scripts.inference.LoadRadiographOrErrord`` puts a placeholder image and the reason (which names the file)
    under ``error_key``; a single request has nothing else to score, so the reason becomes MONAI Label's
    ``INVALID_INPUT`` error.
    """

    def __init__(self, error_key: str = "error") -> None:
        self.error_key = error_key

    def __call__(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        reason = data.get(self.error_key)
        if reason:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, str(reason))
        return data


class AnomalyInferTask(BasicInferTask):
    """Scores one radiograph of the datastore with the bundle at ``bundle_path`` and the model ``ckpt_path``.

    Result: the label image is ``anomaly_map >= map_threshold`` (1 = abnormal region, 0 elsewhere, ``uint8``) at
    the input's original size and orientation (rows and columns as the input is displayed); a PNG for PNG/JPEG
    inputs, NIfTI for DICOM and NIfTI inputs (``result_extension`` in the request chooses another, e.g. Slicer's
    ``.nrrd``). The label of a DICOM or NIfTI input has the input's geometry as ITK reads it (spacing, origin,
    direction), so a viewer that places the input by it (Slicer) overlays the label on it. The result
    params hold ``anomaly_score`` (in [0, 1], higher = more abnormal), ``decision`` (``abnormal`` when
    ``anomaly_score >= threshold``, as ``configs/inference.json``'s CSV), ``threshold`` and ``score_kind``
    (stored with the model), ``map_threshold``, ``img_size`` and ``model_version``.

    ``map_threshold`` defaults to ``inference.json``'s ``overlay_vmax``, the map value the overlay shows at full
    colour; a request may pass another.

    The model file is read again whenever it changes (a training run rewrites it), with the network rebuilt at
    the model's ``img_size``. Without a model file the task is listed with ``needs_training`` and every request
    is refused with a message that says how to train.

    Args:
        bundle_path: the bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``scripts/``).
        ckpt_path: the model file (``model.pt``) to serve.
        model_name: the name the app serves it under (for the messages).
    """

    def __init__(self, bundle_path: str | os.PathLike, ckpt_path: str | os.PathLike, model_name: str) -> None:
        self.bundle_path = str(Path(bundle_path).resolve())
        self.ckpt_path = Path(ckpt_path).resolve()
        self.model_name = model_name
        self.bundle_config = self._read_config()
        self._model_stamp: float | None = None
        self._img_size = 0
        self.version = str(self._bundle_content("model_version"))
        super().__init__(
            path=str(self.ckpt_path),
            network=None,
            type=InferType.SEGMENTATION,
            labels={LABEL_NAME: 1},
            dimension=2,
            description=self._bundle_content("_meta_#description"),
            load_strict=True,
            config={"map_threshold": float(self._bundle_content("overlay_vmax"))},
        )

    # -------------------------------------------------------------------------------------------- bundle config

    def _read_config(self) -> ConfigParser:
        """A new parser of ``inference.json``; the bundle's ``scripts`` are imported anew for it (as MONAI Label's
        bundle tasks do, so that no other bundle's ``scripts`` package is used)."""
        unload_module("scripts")
        parser = ConfigParser()
        parser.read_config(os.path.join(self.bundle_path, "configs", "inference.json"))
        parser.read_meta(os.path.join(self.bundle_path, "configs", "metadata.json"))
        parser.update({"bundle_root": self.bundle_path, "ckpt_path": str(self.ckpt_path)})
        return parser

    def _bundle_content(self, config_id: str) -> Any:
        """A parsed (instantiated) item of ``inference.json``, with the bundle's ``scripts`` importable."""
        sys.path.insert(0, self.bundle_path)
        try:
            return self.bundle_config.get_parsed_content(config_id, instantiate=True)
        finally:
            sys.path.remove(self.bundle_path)

    def needs_training(self) -> bool:
        return not self.ckpt_path.is_file()

    def needs_training_message(self) -> str:
        return (f"model '{self.model_name}' needs training: there is no model file {self.ckpt_path}; "
                f"{training_hint(self.model_name)}.")

    def served_img_size(self) -> int | None:
        """The ``img_size`` of the model file, ``None`` while there is none."""
        if self.needs_training():
            return None
        self._sync_model()
        return self._img_size

    def _sync_model(self) -> None:
        """Re-read the config and rebuild the network when the model file changed (its ``img_size`` may have)."""
        stamp = self.ckpt_path.stat().st_mtime
        if stamp == self._model_stamp:
            return
        self.bundle_config = self._read_config()
        self._img_size = int(self._bundle_content("img_size"))  # the model file's
        self.network = self._bundle_content("network_def")
        self._networks.clear()
        self._model_stamp = stamp
        logger.info("serving %s at img_size %d", self.ckpt_path, self._img_size)

    # -------------------------------------------------------------------------------------------- MONAI Label

    def is_valid(self) -> bool:
        return True  # listed without a model too: info() then says it needs training

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["version"] = self.version
        info["needs_training"] = self.needs_training()
        if self.needs_training():
            info["description"] = f"{self.description} -- {self.needs_training_message()}"
        return info

    def __call__(self, request: dict, callbacks: Any = None) -> tuple[Any, dict]:
        if self.needs_training():
            raise MONAILabelException(MONAILabelError.INFERENCE_ERROR, self.needs_training_message())
        self._sync_model()
        return super().__call__(request, callbacks)

    def pre_transforms(self, data: Mapping[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's ``preprocessing``, then a stop when its loader could not read the file."""
        return [*self._bundle_content("preprocessing").transforms, RaiseOnLoadError()]

    def inferer(self, data: Mapping[str, Any] | None = None) -> Inferer:
        return self._bundle_content("inferer")

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict[str, Any]:
        """Runs the detector on the ``1 x img_size x img_size`` image; ``data["pred"]`` becomes the decollated
        ``[anomaly_map (1 x img_size x img_size), score (0-d)]`` that the bundle's postprocessing splits."""
        network = self._get_network(device, data)
        if not bool(network.statistics.ready):
            raise MONAILabelException(
                MONAILabelError.INFERENCE_ERROR,
                f"model file {self.ckpt_path} holds no measured score statistics (it was saved before they were "
                f"measured or by an older version of this bundle): {training_hint(self.model_name)}.",
            )
        image = data[self.input_key]
        with torch.no_grad():
            anomaly_map, score = self.inferer(data)(image[None].to(torch.device(device)), network)
        data[self.output_label_key] = [anomaly_map[0].cpu(), score[0].cpu()]
        data["threshold"] = float(network.statistics.threshold)
        data["score_kind"] = network.score_kind
        return data

    def post_transforms(self, data: Mapping[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's ``postprocessing`` (named outputs, map at the source size), then :meth:`to_result`."""
        post = self._bundle_content("postprocessing")
        post = list(post.transforms) if isinstance(post, Compose) else list(post)
        return [*post, self.to_result]

    def to_result(self, data: dict[str, Any]) -> dict[str, Any]:
        """Label image and result params from the named outputs (``anomaly_map`` 1 x H x W, ``score`` 0-d)."""
        map_threshold = float(data.get("map_threshold", self._config["map_threshold"]))
        anomaly_map = torch.as_tensor(data["anomaly_map"])[0]  # H x W, rows first as displayed
        label = (anomaly_map >= map_threshold).to(torch.uint8).numpy()
        data[self.output_label_key] = np.ascontiguousarray(label.T)  # MONAI Label's writer takes (x, y) = (col, row)
        score = float(data["score"])
        threshold = data["threshold"]
        data[self.output_json_key] = {
            "anomaly_score": score,
            "decision": "abnormal" if score >= threshold else "normal",
            "threshold": threshold,
            "score_kind": data["score_kind"],
            "map_threshold": map_threshold,
            "abnormal_pixels": int(label.sum()),
            "img_size": self._img_size,
            "model_version": self.version,
        }
        if not data.get("result_extension"):
            suffix = Path(str(data.get("image_path", ""))).suffix.lower()
            data["result_extension"] = ".png" if suffix in _RASTER_INPUTS else ".nii.gz"
        data["result_dtype"] = np.uint8
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        """MONAI Label's writer for PNG/JPEG inputs (their label has ITK's default geometry, as the input); for
        other inputs the label file gets the input's spacing, origin and direction (:func:`source_geometry`), or
        MONAI Label's writer's default geometry, with a warning, when ITK cannot tell them."""
        source = str(data.get("image_path", ""))
        label = np.ascontiguousarray(data[self.output_label_key].T)  # rows x columns
        geometry = None if Path(source).suffix.lower() in _RASTER_INPUTS else source_geometry(source, label.shape)
        if geometry is None:
            return super().writer(data, extension, dtype)
        size, spacing, origin, direction = geometry
        image = sitk.GetImageFromArray(label.reshape((1,) * (len(size) - 2) + label.shape))
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        label_file = tempfile.NamedTemporaryFile(suffix=data["result_extension"], delete=False).name
        sitk.WriteImage(image, label_file, useCompression=True)
        return label_file, data[self.output_json_key]


def source_geometry(source: str | os.PathLike, shape: tuple[int, int]) -> tuple[tuple, ...] | None:
    """``(size, spacing, origin, direction)`` that ITK reads from the header of the radiograph ``source`` whose
    pixel grid is ``shape`` (rows x columns; ITK reads a single DICOM as ``columns x rows x 1``); ``None`` (with a
    warning) when ITK cannot read the header or reads another grid."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        logger.warning("%s: ITK cannot read its geometry (%s); its label gets the default geometry.", source, e)
        return None
    size = reader.GetSize()
    if tuple(size[:2]) != (shape[1], shape[0]) or any(s != 1 for s in size[2:]):
        logger.warning("%s: ITK reads it as %s, not as one %d x %d image; its label gets the default geometry.",
                       source, size, shape[1], shape[0])
        return None
    return size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
