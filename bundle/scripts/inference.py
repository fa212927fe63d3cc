"""Inference on clinical radiographs: input listing, fault-tolerant loading, postprocessing and result writers.

``configs/inference.json`` runs MONAI's ``SupervisedEvaluator`` over a folder (or datalist) of PNG, JPEG,
DICOM and NIfTI files with the :class:`~scripts.detector.AnomalyDetector` as its network:

- :func:`list_inputs` lists the files; :class:`LoadRadiographOrErrord` loads each one, or on failure
  returns a placeholder image and the reason, so one bad file does not stop the run;
- postprocessing: :class:`SplitOutputd` names the network outputs, :class:`ResizeToSourced` brings the
  anomaly map back to the source's original size;
- handlers: :class:`AnomalyMapWriter` writes per image a heatmap overlay (PNG), the anomaly map (NIfTI)
  and, for DICOM sources, a DICOM Secondary Capture; :class:`ScoreCSVWriter` writes one CSV row per input
  with the score, the decision at the model's threshold, or the reason the file could not be read.

Usage and outputs: ``bundle/docs/inference.md``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import threading
import zlib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import matplotlib
import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.data import MetaTensor, load_decathlon_datalist
from monai.transforms import MapTransform, Resize
from monai.utils import ImageMetaKey, MetaKeys, convert_to_tensor
from pydicom.uid import generate_uid

from .datalist import is_image_file
from .detector import AnomalyDetector
from .dicom_sc import secondary_capture, write_secondary_capture
from .engines import unwrap
from .io import DICOM_META_KEYWORDS, LoadRadiograph, LoadRadiographd, RadiographLoadError
from .png_writer import write_png_rgb
from .workflow import as_bool

__all__ = [
    "list_inputs",
    "LoadRadiographOrErrord",
    "SplitOutputd",
    "ResizeToSourced",
    "output_stem",
    "render_overlay",
    "write_gzip_huffman",
    "decide",
    "AnomalyMapWriter",
    "ScoreCSVWriter",
]

logger = logging.getLogger(__name__)

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg")


# ------------------------------------------------------------------------------------------------- inputs


def list_inputs(
    dataset_dir: str | os.PathLike,
    exclude: Iterable[str | os.PathLike] = (),
    datalist_key: str = "test",
) -> list[dict[str, str]]:
    """The images to score, as ``[{"image": path}, ...]``.

    Args:
        dataset_dir: a folder, scanned recursively for the files :func:`scripts.datalist.is_image_file` accepts
            (sorted, so the order is reproducible); or a datalist JSON, whose ``datalist_key`` list gives
            the images (paths relative to the JSON file or absolute); or a single image file.
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
        paths = [
            str(p)
            for p in sorted(root.rglob("*"))
            if not any(p.resolve().is_relative_to(e) for e in excluded) and is_image_file(p)
        ]
    elif root.name.lower().endswith(".json"):
        paths = _datalist_images(root, datalist_key)
    else:
        paths = [str(root)]
    unique = list(dict.fromkeys(paths))
    if len(unique) < len(paths):
        logger.warning("%s lists %d images more than once; each is scored once.", root, len(paths) - len(unique))
    if not unique:
        raise ValueError(
            f"no images found in {root}: supported are DICOM, PNG, JPEG and NIfTI files (see bundle/docs/io.md)."
        )
    logger.info("%d images to score from %s", len(unique), root)
    return [{"image": p} for p in unique]


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
    """:class:`scripts.io.LoadRadiographd` that reports a file it cannot load instead of raising.

    On success ``d[error_key]`` is ``""``. On failure each key gets a placeholder: a ``1 x size x size``
    zero MetaTensor whose metadata has the same keys as a loaded image (so batches still collate and the
    rest of the preprocessing runs), and ``d[error_key]`` holds the reason, which names the file.

    Args:
        keys: keys of the paths to load.
        error_key: where the failure reason goes.
        placeholder_size: side of the placeholder image.
        kwargs: passed to :class:`scripts.io.LoadRadiographd` (size limits).
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


# ------------------------------------------------------------------------------------------------ writers


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


OVERLAY_BLOCK_ROWS = 256  # render_overlay blends this many rows at a time


def render_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, vmax: float = 0.25, alpha: float = 0.6, cmap: str = "jet"
) -> np.ndarray:
    """Heatmap of an anomaly map blended over the grey radiograph.

    The map is shown on a fixed scale ``[0, vmax]`` (not per image, so colours compare across images) and
    its opacity grows with its value (``alpha * map / vmax``), so normal regions show the radiograph. The
    result equals :func:`monai.visualize.blend_images` with that alpha and ``rescale_arrays=False``; the colour
    map is applied as a table lookup (the colours matplotlib gives), without the float64 RGBA intermediate,
    which makes it about five times faster on a clinical-size radiograph. Rows are blended in blocks, so its
    float temporaries stay at a few MB however large the radiograph (writers render several at once).

    Args:
        image: ``H x W`` displayed radiograph in ``[0, 1]``.
        anomaly_map: ``H x W`` anomaly map, same size.
        vmax: map value shown at full colour and opacity.
        alpha: largest opacity of the heatmap.
        cmap: matplotlib colour map.

    Returns:
        ``H x W x 3`` ``uint8`` RGB.
    """
    if image.shape != anomaly_map.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and anomaly map {anomaly_map.shape} must be the same H x W.")
    colour_map = matplotlib.colormaps[cmap]
    table = colour_map(np.arange(colour_map.N))[:, :3].astype(np.float32)
    rgb = np.empty((*image.shape, 3), dtype=np.uint8)
    for start in range(0, image.shape[0], OVERLAY_BLOCK_ROWS):  # bounded float temporaries, whatever the size
        rows = slice(start, start + OVERLAY_BLOCK_ROWS)
        level = np.clip(np.asarray(anomaly_map[rows], dtype=np.float32) / vmax, 0.0, 1.0)
        index = np.minimum((level * colour_map.N).astype(np.intp), colour_map.N - 1)  # matplotlib's value -> colour
        weight = (alpha * level)[..., None]
        grey = np.clip(np.asarray(image[rows], dtype=np.float32), 0.0, 1.0)[..., None]
        rgb[rows] = np.rint(((1.0 - weight) * grey + weight * table[index]) * 255).clip(0, 255)
    return rgb


def write_gzip_huffman(path: str | os.PathLike, data: bytes, chunk_bytes: int = 1 << 22) -> None:
    """Write ``data`` to ``path`` as a gzip file (any gzip reader inflates it), compressed with Huffman coding only,
    ``chunk_bytes`` at a time (the compressed file is never held in memory).

    A float32 anomaly map gives LZ77 almost no repeated strings: on a clinical-size map (27 MB) this takes 0.32 s
    against 0.71 s for zlib's level 1, which nibabel uses, for the same size (84 % of the raw bytes).
    """
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9, zlib.Z_HUFFMAN_ONLY)
    view = memoryview(data)
    with open(path, "wb") as stream:
        for start in range(0, len(view), chunk_bytes):
            stream.write(packer.compress(view[start : start + chunk_bytes]))
        stream.write(packer.flush())


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

    - ``_overlay.png``: the heatmap overlay on the displayed input (:func:`render_overlay`), RGB;
    - ``_anomaly_map.nii.gz`` (or ``.nii``): the map as float32 NIfTI, voxel ``(i, j)`` = (column, row) as
      NIfTI viewers index 2-D images; for a NIfTI input its affine is copied, so the map overlays the input;
    - ``_anomaly_sc.dcm`` (DICOM inputs, ``save_dicom``): the overlay as a DICOM Secondary Capture in the
      source's study (:func:`scripts.dicom_sc.secondary_capture`); overlays of one source series share a
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
        map_suffix: ``".nii.gz"`` (gzip, :func:`write_gzip_huffman`) or ``".nii"`` (faster to write: float32 maps
            hardly compress, to about 85 %, and on a clinical-size radiograph gzip costs about 0.3 s per image).
        vmax, alpha, cmap: overlay rendering, see :func:`render_overlay`.
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
        self.vmax, self.alpha, self.cmap = vmax, alpha, cmap
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
            # voxel (i, j) = (column, row): the transposed view, which NIfTI's column-major voxel order stores as the
            # map's own row-major bytes, so nibabel writes it without a copy (a C-contiguous copy would be transposed
            # back: 0.11 s per clinical-size map)
            nifti = nib.Nifti1Image(amap.T, self._affine(source))
            if self.map_suffix == ".nii.gz":
                write_gzip_huffman(path, nifti.to_bytes())
            else:
                nifti.to_filename(path)
            written["anomaly_map"] = path.name
        if not (self.save_overlay or self.save_dicom):
            return written
        image = self.loader(source)
        if tuple(image.shape[1:]) != amap.shape:
            raise ValueError(f"reloaded image is {tuple(image.shape[1:])}, its anomaly map {amap.shape}")
        overlay = render_overlay(image[0].numpy(), amap, self.vmax, self.alpha, self.cmap)
        if self.save_overlay:
            path = self._path(stem, "_overlay.png")
            write_png_rgb(path, overlay)  # about 2x faster than Pillow's encoder (png_writer's docstring)
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

    @staticmethod
    def _affine(source: str) -> np.ndarray:
        """The affine of a NIfTI source (header only), identity for other formats."""
        if source.lower().endswith((".nii", ".nii.gz")):
            try:
                return np.asarray(nib.load(source).affine)
            except Exception as exc:  # the image loaded, so this is unexpected; the map is still useful
                logger.warning("%s: affine unreadable (%s); anomaly map written with an identity affine.", source, exc)
        return np.eye(4)


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
                "writes holds the statistics measured on the training images and the validation threshold."
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
