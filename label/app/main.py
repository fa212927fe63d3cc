"""MONAI Label app serving the chest radiograph anomaly bundle (``bundle/``) to 3D Slicer and OHIF.

Start (README.md, "MONAI Label"): ``monailabel start_server --app label/app --studies <folder> --conf models cxr``.
``--conf`` keys:

- ``bundle``: the bundle folder (default: this repository's ``bundle/``), read in place, never copied;
- ``ckpt_dir``: the model folder (default: ``<bundle>/models``): the app serves ``<ckpt_dir>/model.pt`` and its
  training writes there;
- ``models``: the name the model is served and trained under (default ``cxr``).

Inference: :class:`lib.infer.AnomalyInferTask`; training: :class:`lib.train.NormalOnlyTrainTask` (their module
docstrings say what MONAI Label's generic bundle tasks do and do not do for this bundle).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from lib.infer import AnomalyInferTask
from lib.train import NormalOnlyTrainTask

from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
# radiograph files of a studies folder: MONAI Label's defaults (PNG, JPEG, NIfTI, ...) and DICOM
DICOM_EXTENSIONS = ("*.dcm", "*.dicom", "*.DCM")
# HTTP status of each MONAI Label error a request can cause; the rest are server errors (500)
HTTP_STATUS = {MONAILabelError.INVALID_INPUT: 422, MONAILabelError.INFERENCE_ERROR: 409}


class CXRAnomalyApp(MONAILabelApp):
    """One model: the bundle's anomaly detector, served for inference and trained from the datastore."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_dir = Path(conf.get("bundle") or DEFAULT_BUNDLE).resolve()
        if not (self.bundle_dir / "configs" / "inference.json").is_file():
            raise FileNotFoundError(f"{self.bundle_dir} is not this bundle (no configs/inference.json): pass "
                                    "'--conf bundle <path to the repository's bundle folder>'.")
        self.ckpt_dir = Path(conf.get("ckpt_dir") or self.bundle_dir / "models").resolve()
        self.model_name = conf.get("models") or "cxr"
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Chest radiograph anomaly detection (SimSID / HCASC)",
            description="Unsupervised anomaly detection trained on normal chest radiographs only: the label is the "
                        "abnormal region of the anomaly map, the params hold the anomaly score and decision.",
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        extensions = [*settings.MONAI_LABEL_DATASTORE_FILE_EXT, *DICOM_EXTENSIONS]
        return LocalDatastore(self.studies, extensions=extensions,
                              auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                              read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self) -> dict[str, InferTask]:
        self.infer_task = AnomalyInferTask(self.bundle_dir, self.ckpt_dir / "model.pt", self.model_name)
        return {self.model_name: self.infer_task}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {self.model_name: NormalOnlyTrainTask(self.bundle_dir, self.conf, self.ckpt_dir,
                                                     served_img_size=self.infer_task.served_img_size)}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's inference, with an unknown image id and the tasks' errors answered as HTTP errors whose
        ``detail`` says what is wrong (MONAI Label leaves them as a bare 500)."""
        image = request.get("image")
        store = datastore or self.datastore()
        local = isinstance(store, LocalDatastore)  # a remote one answers for itself (and may download to look)
        if local and isinstance(image, str) and not os.path.exists(image) and not store.get_image_uri(image):
            raise HTTPException(status_code=404, detail=f"image '{image}' is not in the datastore {self.studies}: "
                                                        "GET /datastore/?output=all lists the image ids.")
        try:
            return super().infer(request, datastore)
        except MONAILabelException as e:
            raise HTTPException(status_code=HTTP_STATUS.get(e.error, 500), detail=e.msg) from e
