"""MONAI Label training task: the bundle's trainer on the datastore's images marked normal.

MONAI Label's generic ``BundleTrainTask`` runs ``configs/train.json`` through ``monai.bundle.run`` with the
datastore's list as overrides, and that is what this task does; it adapts the generic task through its own hooks
where this bundle differs:

- the training set: ``BundleTrainTask`` takes the images that have a final *segmentation label*; this bundle
  trains on normal images only and needs no segmentation, so :meth:`NormalOnlyTrainTask._fetch_datalist` takes
  the images whose datastore info says ``"finding": "normal"`` (``PUT /datastore/image/info``), and those marked
  ``"finding": "abnormal"`` join the validation split, which needs both kinds for its AUC, the decision
  threshold and the choice of the best checkpoint;
- the bundle builds every split from its ``datalist`` id (the score statistics read the training split too), so the
  whole ``datalist`` is overridden, not only ``train#dataset#data``;
- the checkpoints go to the folder the app's inference task reads (``ckpt_dir``), as a new run that replaces the
  previous one (``overwrite``), at the ``img_size`` of the request (default: the served model's, else 128);
- fine-tuning from the served ``model.pt`` loads it into the bundle's ``detector`` (generator, discriminator,
  statistics), the id that ``model.pt`` was saved from;
- a run is one process unless the request sets ``multi_gpu`` (MONAI Label's ``torchrun`` path over
  ``multi_gpu_train.json`` has not been run with this bundle).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from monai.data import partition_dataset

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask

logger = logging.getLogger(__name__)

FINDING_KEY = "finding"  # datastore image info: "normal" (training) or "abnormal" (validation only)
NORMAL, ABNORMAL = "normal", "abnormal"
DEFAULT_IMG_SIZE = 128  # the reference size of train.json for data other than the built-in synthetic set
# train.json ids a training request may set (besides MONAI Label's own max_epochs, val_split, pretrained, device)
REQUEST_OVERRIDES = ("img_size", "batch_size", "num_workers", "val_interval", "lr", "score_kind", "seed")


class DetectorConstants(BundleConstants):
    """``model.pt`` holds the state dict of train.json's ``detector``, so a pretrained start loads it there."""

    def key_network(self) -> str:
        return "detector"


class NormalOnlyTrainTask(BundleTrainTask):
    """Trains the bundle at ``bundle_path`` on the datastore's normal images, writing into ``ckpt_dir``.

    Args:
        bundle_path: the bundle folder (``configs/train.json``, ``configs/metadata.json``).
        conf: the app's ``--conf`` pairs.
        ckpt_dir: where the checkpoints and ``model.pt`` go (the folder the app's inference task serves).
        served_img_size: returns the ``img_size`` of the served model, or ``None`` without one.
    """

    def __init__(self, bundle_path: str | os.PathLike, conf: dict[str, str], ckpt_dir: str | os.PathLike,
                 served_img_size: Any) -> None:
        super().__init__(str(Path(bundle_path).resolve()), conf, const=DetectorConstants(), load_strict=True)
        self.ckpt_dir = Path(ckpt_dir).resolve()
        self.served_img_size = served_img_size
        self._request: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        options = super().config()
        options["model_filename"] = ["model.pt"]
        options["multi_gpu"] = False  # MONAI Label's torchrun path has not been run with this bundle
        options["max_epochs"] = int(self.bundle_config.get("epochs"))
        options["img_size"] = self.served_img_size() or DEFAULT_IMG_SIZE
        options["batch_size"] = int(self.bundle_config.get("batch_size"))
        return options

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict:
        self._request = {"multi_gpu": False, **request}  # one process unless a request asks for MONAI Label's torchrun
        return super().__call__(self._request, datastore)

    def _fetch_datalist(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        """``[{"image": path, "label": 0 | 1}]`` of the images marked normal (0) or abnormal (1)."""
        items = []
        for image_id in sorted(datastore.list_images()):
            info = datastore.get_image_info(image_id)
            finding = str(info.get(FINDING_KEY, "")).strip().lower()
            if finding in (NORMAL, ABNORMAL):
                items.append({"image": datastore.get_image_uri(image_id), "label": int(finding == ABNORMAL)})
            elif finding:
                logger.warning("image %s: finding %r is neither %r nor %r; not used.", image_id, finding, NORMAL,
                               ABNORMAL)
        return items

    def _partition_datalist(self, datalist: list[dict[str, Any]], request: dict[str, Any],
                            shuffle: bool = False) -> tuple[list[dict], list[dict]]:
        """Normal images split ``val_split`` into training and validation; abnormal images validate only.

        Raises:
            ValueError: no normal image for training, or the validation split lacks a normal or an abnormal image.
        """
        normals = [d for d in datalist if d["label"] == 0]
        abnormals = [d for d in datalist if d["label"] == 1]
        val_split = float(request.get("val_split", 0.2))
        n_val = max(1, round(val_split * len(normals))) if normals else 0
        val_normals, train = (partition_dataset(normals, ratios=[n_val, len(normals) - n_val], shuffle=shuffle)
                              if len(normals) > 1 else ([], normals))
        hint = (f"mark images in the datastore with the image info {{\"{FINDING_KEY}\": \"{NORMAL}\"}} or "
                f"{{\"{FINDING_KEY}\": \"{ABNORMAL}\"}} (PUT /datastore/image/info)")
        if not train or not val_normals or not abnormals:
            raise ValueError(
                f"training needs at least 2 images marked normal (training and validation) and 1 marked abnormal "
                f"(validation); the datastore has {len(normals)} normal and {len(abnormals)} abnormal: {hint}.")
        logger.info("training on %d normal images; validating on %d normal and %d abnormal", len(train),
                    len(val_normals), len(abnormals))
        return train, val_normals + abnormals

    def _img_size(self) -> int:
        """The requested ``img_size``, else the served model's, else the reference size."""
        return int(self._request.get("img_size") or self.served_img_size() or DEFAULT_IMG_SIZE)

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        """Start from the served model (not ``<bundle>/models``) when ``pretrained``, there is one, and it was
        trained at the requested ``img_size``; otherwise the run starts from random weights."""
        served = self.ckpt_dir / "model.pt"
        if not pretrained or not served.is_file():
            return
        if self.served_img_size() != self._img_size():
            logger.info("not starting from %s: it was trained at img_size %s, this run trains at %d.", served,
                        self.served_img_size(), self._img_size())
            return
        super()._load_checkpoint(str(served), True, train_handlers)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        request = self._request
        train, val = overrides["train#dataset#data"], overrides.get("validate#dataset#data", [])
        overrides.update({
            "datalist": {"training": train, "validation": val, "test": []},
            "ckpt_dir": str(self.ckpt_dir),
            "output_dir": str(self.ckpt_dir.parent / "runs"),
            "overwrite": True,
            "resume": False,
            "epochs": overrides["train#trainer#max_epochs"],
            "img_size": self._img_size(),
        })
        overrides.update({k: request[k] for k in REQUEST_OVERRIDES if k in request and k != "img_size"})
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        logger.info("training into %s at img_size %d", self.ckpt_dir, overrides["img_size"])
        return overrides
