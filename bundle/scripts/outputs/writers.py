"""Inference results on disk: per input the overlay PNG, the NIfTI map and the DICOM Secondary Capture
(:class:`AnomalyMapWriter`), and one CSV row per input with its score and decision (:class:`ScoreCSVWriter`).
Usage and outputs: ``bundle/docs/inference.md``."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.utils import ImageMetaKey
from pydicom.uid import generate_uid

from ..data.formats import SUPPORTED_SUFFIXES
from ..data.transforms import LoadRadiograph
from ..detector import AnomalyDetector
from ..utils import as_bool, unwrap
from .dicom_sc import secondary_capture, write_secondary_capture
from .nifti import source_affine, write_nifti_map
from .overlay import render_overlay
from .png import write_png_rgb

__all__ = ["output_stem", "decide", "AnomalyMapWriter", "ScoreCSVWriter"]

logger = logging.getLogger(__name__)

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIXES = sorted(SUPPORTED_SUFFIXES, key=len, reverse=True)  # ".nii.gz" before ".nii"


def output_stem(path: str | os.PathLike, max_length: int = 64) -> str:
    """A file-name stem for the outputs of input ``path``: its sanitised name plus a hash of its full path.

    Only ``[A-Za-z0-9._-]`` survive (other runs become ``_``); the 10-hex-digit SHA-256 of the absolute path
    makes the stem unique for inputs that share a name in different folders, and stable across runs.
    """
    name = Path(path).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    safe = _UNSAFE_CHARS.sub("_", name).strip("._-")[:max_length] or "image"
    digest = hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{safe}-{digest}"


def decide(score: float, threshold: float) -> str:
    """``"abnormal"`` when ``score >= threshold``, else ``"normal"`` (as in the evaluation report)."""
    return "abnormal" if score >= threshold else "normal"


def _items(engine: Engine) -> list[tuple[dict, dict]]:
    """(batch item, output item) pairs of a decollated evaluator iteration."""
    batch, output = engine.state.batch, engine.state.output
    if not isinstance(output, list) or not isinstance(batch, list):
        raise TypeError("the inference writers need a decollating evaluator (decollate=True).")
    return list(zip(batch, output))


def _source_path(item: Mapping, image_key: str) -> str:
    image = item[image_key]
    return str(image.meta[ImageMetaKey.FILENAME_OR_OBJ]) if isinstance(image, MetaTensor) else str(image)


def _threshold(detector: AnomalyDetector) -> float:
    return float(unwrap(detector).statistics.threshold)


class AnomalyMapWriter:
    """Writes, for every successfully loaded input, its anomaly map outputs into ``output_dir``.

    Files, named ``<output_stem(input)><suffix>`` (:func:`output_stem`), all at the input's original size
    and orientation:

    - ``_overlay.png``: the heatmap overlay on the displayed input (:func:`scripts.outputs.overlay.render_overlay`), RGB;
    - ``_anomaly_map.nii.gz`` (or ``.nii``): the map as float32 NIfTI, voxel ``(i, j)`` = (column, row) as
      NIfTI viewers index 2-D images; for a NIfTI input its affine is copied, so the map overlays the input;
    - ``_anomaly_sc.dcm`` (DICOM inputs, ``save_dicom``): the overlay as a DICOM Secondary Capture in the
      source's study (:func:`scripts.outputs.dicom_sc.secondary_capture`); overlays of one source series share a
      new series.

    The written names are recorded in the output item under ``"outputs"`` for :class:`ScoreCSVWriter`. An
    input whose outputs cannot be made from its data (e.g. a DICOM without valid UIDs for the Secondary
    Capture) gets the reason in its ``error_key`` instead of stopping the run.

    The items of a batch are written by ``num_threads`` threads at once (compressing the map and the PNG, and
    blending the overlay, release the GIL; at clinical sizes they take most of an inference run), and every
    item of the batch is written before the engine moves on. Results, errors and their order are the same as
    with one thread: an error that stops the run is raised for the first item of the batch that had one.

    Args:
        output_dir: destination folder (created); nothing is written outside it.
        detector: the scored detector (for the decision threshold written into the Secondary Capture).
        save_overlay: write the PNG overlay.
        save_map: write the NIfTI map.
        save_dicom: write the Secondary Capture of DICOM inputs.
        overwrite: replace existing files; otherwise an existing file is an error naming it.
        map_suffix: ``".nii.gz"`` (gzip, :func:`scripts.outputs.nifti.write_gzip_huffman`) or ``".nii"`` (faster to
            write: float32 maps hardly compress, to about 85 %, and on a clinical-size radiograph gzip costs about
            0.3 s per image).
        vmin, vmax, alpha, cmap: overlay rendering, see :func:`scripts.outputs.overlay.render_overlay`.
        model_version: written into the Secondary Capture's software versions.
        num_threads: items written at once; 1 writes them one after the other in the engine's thread.
        image_key, map_key, score_key, error_key: item keys.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        detector: AnomalyDetector,
        save_overlay: bool = True,
        save_map: bool = True,
        save_dicom: bool = True,
        overwrite: bool = False,
        map_suffix: str = ".nii.gz",
        vmax: float = 0.25,
        alpha: float = 0.6,
        cmap: str = "jet",
        vmin: float = 0.0,
        model_version: str = "",
        num_threads: int = 1,
        image_key: str = "image",
        map_key: str = "anomaly_map",
        score_key: str = "score",
        error_key: str = "error",
    ) -> None:
        text = str(num_threads).strip()  # an int, or the command line's string
        if not text.isdecimal() or int(text) < 1:
            raise ValueError(f"num_threads (inference.json's writer_threads) must be a whole number of at least 1, "
                             f"got {num_threads!r}.")
        self.num_threads = int(text)
        self.output_dir = Path(output_dir)
        self.detector = detector
        self.save_overlay = as_bool(save_overlay, "save_overlay")
        self.save_map = as_bool(save_map, "save_map")
        self.save_dicom = as_bool(save_dicom, "save_dicom")
        self.overwrite = as_bool(overwrite, "overwrite")
        if map_suffix not in (".nii.gz", ".nii"):
            raise ValueError(f"map_suffix must be '.nii.gz' or '.nii', got {map_suffix!r}.")
        self.map_suffix = map_suffix
        self.vmin, self.vmax, self.alpha, self.cmap = vmin, vmax, alpha, cmap
        self.model_version = model_version
        self.image_key, self.map_key, self.score_key, self.error_key = image_key, map_key, score_key, error_key
        self._local = threading.local()  # a loader per writing thread: MONAI's readers keep per-read state
        self.series_uids: dict[str, str] = {}

    @property
    def loader(self) -> LoadRadiograph:
        """The calling thread's loader of the source images."""
        if not hasattr(self._local, "loader"):
            self._local.loader = LoadRadiograph()
        return self._local.loader

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def started(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.series_uids = {}

    def __call__(self, engine: Engine) -> None:
        threshold = _threshold(self.detector)
        jobs = [(batch_item, output, _source_path(batch_item, self.image_key))
                for batch_item, output in _items(engine) if not batch_item.get(self.error_key)]
        if self.num_threads == 1 or len(jobs) < 2:
            results = [self._write_or_error(source, output, threshold) for _, output, source in jobs]
        else:
            with ThreadPoolExecutor(min(self.num_threads, len(jobs)), thread_name_prefix="anomaly-writer") as pool:
                futures = [pool.submit(self._write_or_error, source, output, threshold) for _, output, source in jobs]
            results = [future.result() for future in futures]  # all done; the first unexpected error is raised
        for (batch_item, output, source), (written, error) in zip(jobs, results):
            if error is None:
                output["outputs"] = written
            else:
                batch_item[self.error_key] = f"outputs of '{source}' not written: {error}"
                logger.warning("%s", batch_item[self.error_key])

    def _write_or_error(self, source: str, output: Mapping, threshold: float) -> tuple[dict[str, str], str | None]:
        """``(written, None)``, or ``({}, reason)`` when the input's data cannot give its outputs (a
        ``RadiographLoadError`` on reloading, bad DICOM UIDs); any other error propagates."""
        try:
            return self.write(source, output[self.map_key], float(output[self.score_key]), threshold), None
        except ValueError as exc:
            return {}, str(exc)

    def _path(self, stem: str, suffix: str) -> Path:
        path = self.output_dir / f"{stem}{suffix}"
        if path.parent != self.output_dir:  # output_stem cannot contain a separator; keep it that way
            raise ValueError(f"output name {path.name!r} leaves {self.output_dir}.")
        if path.exists() and not self.overwrite:
            raise FileExistsError(f"{path} exists; pass '--overwrite true' to replace the outputs of an earlier run.")
        return path

    def write(self, source: str, anomaly_map: torch.Tensor, score: float, threshold: float) -> dict[str, str]:
        """Write the outputs of one input; returns ``{kind: file name}`` of the written files.

        Args:
            source: the input file.
            anomaly_map: ``1 x H x W`` map at the input's original size.
            score: the input's anomaly score.
            threshold: the decision threshold.
        """
        stem = output_stem(source)
        amap = torch.as_tensor(anomaly_map).detach().float().cpu().numpy()[0]
        written: dict[str, str] = {}
        if self.save_map:
            path = self._path(stem, f"_anomaly_map{self.map_suffix}")
            write_nifti_map(path, amap, source_affine(source))
            written["anomaly_map"] = path.name
        if not (self.save_overlay or self.save_dicom):
            return written
        image = self.loader(source)
        if tuple(image.shape[1:]) != amap.shape:
            raise ValueError(f"reloaded image is {tuple(image.shape[1:])}, its anomaly map {amap.shape}")
        overlay = render_overlay(image[0].numpy(), amap, self.vmax, self.alpha, self.cmap, self.vmin)
        if self.save_overlay:
            path = self._path(stem, "_overlay.png")
            write_png_rgb(path, overlay)  # about 2x faster than Pillow's encoder (scripts.outputs.png)
            written["overlay"] = path.name
        if self.save_dicom and image.meta.get("source_format") == "dicom":
            path = self._path(stem, "_anomaly_sc.dcm")
            dicom = image.meta["dicom"]
            series_key = dicom.get("SeriesInstanceUID") or dicom.get("StudyInstanceUID", "")
            comments = (f"anomaly score {score:.4f}: {decide(score, threshold)} at threshold {threshold:.4f}. "
                        "Research use only, not for diagnosis.")
            dataset = secondary_capture(
                overlay,
                dicom,
                series_instance_uid=self.series_uids.setdefault(series_key, generate_uid()),  # atomic: threads share it
                image_comments=comments,
                software_versions=self.model_version,
            )
            write_secondary_capture(dataset, path, overwrite=self.overwrite)
            written["dicom_sc"] = path.name
        return written


class ScoreCSVWriter:
    """Writes one CSV row per input, as the evaluator runs (flushed after every batch).

    Columns: ``file`` (the input path), ``status`` (``ok``, or ``error: <reason naming the file>``),
    ``score`` (anomaly score in [0, 1], higher = more abnormal), ``decision`` (``abnormal`` when
    ``score >= threshold``), ``threshold`` and ``score_kind`` (stored with the model), ``model_version``,
    and the output files written by :class:`AnomalyMapWriter` (``overlay``, ``anomaly_map``, ``dicom_sc``,
    names inside the output folder). Attach it after :class:`AnomalyMapWriter`.

    Args:
        output_file: the CSV file; it must not exist unless ``overwrite``.
        detector: the scored detector (threshold, score kind, whether its statistics were measured).
        model_version: the bundle version (``metadata.json``).
        overwrite: replace an existing CSV.
        image_key, score_key, error_key: item keys.
    """

    COLUMNS = ("file", "status", "score", "decision", "threshold", "score_kind", "model_version",
               "overlay", "anomaly_map", "dicom_sc")

    def __init__(
        self,
        output_file: str | os.PathLike,
        detector: AnomalyDetector,
        model_version: str = "",
        overwrite: bool = False,
        image_key: str = "image",
        score_key: str = "score",
        error_key: str = "error",
    ) -> None:
        self.output_file = Path(output_file)
        self.detector = detector
        self.model_version = model_version
        self.overwrite = as_bool(overwrite, "overwrite")
        self.image_key, self.score_key, self.error_key = image_key, score_key, error_key
        self._stream: IO[str] | None = None
        self._writer: csv.DictWriter | None = None
        self.counts = {"ok": 0, "error": 0}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.open)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.close_on_error)

    def open(self, engine: Engine | None = None) -> None:
        """Create the CSV and write its header.

        Raises:
            RuntimeError: the detector holds no measured score statistics (checked before the CSV is created).
            FileExistsError: the CSV exists and ``overwrite`` is false.
        """
        if not bool(unwrap(self.detector).statistics.ready):
            raise RuntimeError(
                "the model holds no measured score statistics: it was saved before they were measured, or by an "
                "older version of this bundle (without the per-pixel reconstruction statistics), so its scores "
                "cannot be normalised and its decision threshold is not set. Train it with this version "
                "(python -m monai.bundle run training --config_file configs/train.json): the models/model.pt it "
                "writes holds the statistics measured on the training images and the validation threshold. A model "
                "of bundles 0.2 to 0.4 (no encoder-feature statistics, or the per-cell Gaussians that 0.5 replaced) "
                "scores without them: add --feature_depth '$None' --score_kind reconstruction --map_kind residual."
            )
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._stream = open(self.output_file, "w" if self.overwrite else "x", newline="", encoding="utf-8")
        except FileExistsError:
            raise FileExistsError(
                f"{self.output_file} exists; pass '--overwrite true' to replace it, or choose another --output_dir."
            ) from None
        self._writer = csv.DictWriter(self._stream, fieldnames=self.COLUMNS)
        self._writer.writeheader()
        self.counts = {"ok": 0, "error": 0}

    def __call__(self, engine: Engine) -> None:
        if self._writer is None or self._stream is None:
            raise RuntimeError("ScoreCSVWriter got results before the engine started.")
        detector = unwrap(self.detector)
        threshold = _threshold(detector)
        for batch_item, output in _items(engine):
            row = {"file": _source_path(batch_item, self.image_key), "model_version": self.model_version,
                   "threshold": threshold, "score_kind": detector.score_kind}
            error = batch_item.get(self.error_key)
            if error:
                row["status"] = f"error: {error}"
                self.counts["error"] += 1
            else:
                score = float(output[self.score_key])
                row.update({"status": "ok", "score": score, "decision": decide(score, threshold),
                            **output.get("outputs", {})})
                self.counts["ok"] += 1
            self._writer.writerow(row)
        self._stream.flush()

    def close(self, engine: Engine | None = None) -> None:
        if self._stream is not None:
            self._stream.close()
            logger.info("scored %d images (%d could not be read): %s", self.counts["ok"], self.counts["error"],
                        self.output_file)
        self._stream, self._writer = None, None

    def close_on_error(self, engine: Engine, exc: BaseException) -> None:
        """Close the CSV, then let the exception propagate."""
        self.close(engine)
        raise exc
