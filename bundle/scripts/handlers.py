"""Ignite handlers: score statistics, threshold selection and the evaluation report."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Randomizable
from monai.utils import convert_to_tensor, evenly_divisible_all_gather

from .detector import SCORE_KINDS, AnomalyDetector
from .distributed import gather_objects
from .engines import autocast_context
from .metrics import (
    PixelAUPRO,
    PixelAUROC,
    auc_confidence_interval,
    auc_or_nan,
    best_accuracy_operating_point,
    connected_components,
    detection_metrics,
    finding_subsets,
)
from .outputs.plots import save_case_grid, save_roc_curve, save_score_histogram
from .utils import as_bool, unwrap

__all__ = [
    "PIXEL_MAPS", "compute_score_statistics", "ScoreStatisticsHandler", "ScoreCollector", "ThresholdSelector",
    "EvaluationReport",
]

logger = logging.getLogger(__name__)

PIXEL_MAPS = ("anomaly_map", "residual", "z_score")
"""The maps whose pixel-level AUROC and AUPRO evaluation reports (``EvaluationReport``): the map written for users,
the reconstruction residual ``|x - G(x)|`` and the per-pixel z-score the reconstruction score is built from."""


@torch.no_grad()
def compute_score_statistics(
    detector: AnomalyDetector,
    data_loader: Iterable,
    device: torch.device | str,
    max_images: int = 200,
    amp: bool = False,
    feature_max_images: int = 2000,
    augmentation: Randomizable | None = None,
    augmented_copies: int = 0,
    seed: int = 0,
) -> None:
    """Measure the score-normalisation statistics over up to ``max_images`` training images (the feature statistics
    over up to ``feature_max_images``, and ``augmented_copies`` randomly augmented copies of those).

    The detector runs in eval mode on un-augmented normal training images; the discriminator logits and the
    smoothed reconstruction residuals (N x 1 x H x W) of the first ``max_images`` and, with feature statistics, the
    pooled encoder features (M x C x grid x grid) of the first ``feature_max_images`` are collected on the CPU (the
    features of images past ``max_images`` by the encoder blocks alone, a small part of the generator's cost), then
    :meth:`~scripts.detector.AnomalyDetector.update_statistics` measures the feature statistics, the per-pixel
    residual statistics and the mean and std of the raw scores. With ``augmentation`` (a MONAI array transform of
    one ``1 x H x W`` image, e.g. ``RandAffine``; its random state is reset to ``seed`` first, so the same weights
    give the same statistics) each feature-statistics image also gives ``augmented_copies`` augmented copies, whose
    features join the bank of normal descriptors. Under ``torch.distributed`` give each rank its shard of the images:
    what every rank collected is gathered, so every rank gets the statistics of the whole set. Every rank must call it.
    """
    detector = unwrap(detector)
    was_training = detector.training
    detector.eval()
    with_features = detector.statistics.density is not None
    copies = augmented_copies if with_features and augmentation is not None else 0
    if copies:
        augmentation.set_random_state(seed)
    cap = max(max_images, feature_max_images) if with_features else max_images
    disc, residual, pooled, seen = [], [], [], 0
    augmented: list[list[torch.Tensor]] = [[] for _ in range(copies)]
    for batch in data_loader:
        x = convert_to_tensor(batch["image"], track_meta=False).to(device)[: cap - seen]
        scored = max(0, min(x.shape[0], max_images - seen))
        with autocast_context(device, amp):
            if scored:
                raw = detector.raw_scores(x[:scored])
                disc.append(raw["disc_logit"].float().cpu())
                residual.append(raw["residual"].float().cpu())
                if with_features:
                    pooled.append(raw["pooled_features"].float().cpu())
            if with_features and scored < x.shape[0]:
                pooled.append(detector.pooled_features(x[scored:]).float().cpu())
        for copy in augmented:  # augmented outside autocast: MONAI's affine grid goes through numpy, which has no bf16
            moved = torch.stack([convert_to_tensor(augmentation(image), track_meta=False) for image in x])
            with autocast_context(device, amp):
                copy.append(detector.pooled_features(moved).float().cpu())
        seen += x.shape[0]
        if seen >= cap:
            break
    detector.train(was_training)
    pixel_shape = tuple(detector.statistics.pixel_mean.shape[1:])
    disc_all = evenly_divisible_all_gather(torch.cat(disc) if disc else torch.zeros(0), concat=True)[:max_images]
    residual_all = evenly_divisible_all_gather(
        torch.cat(residual) if residual else torch.zeros(0, *pixel_shape), concat=True
    )[:max_images]
    seen = disc_all.shape[0]
    if seen == 0:
        raise ValueError("no training images to compute the score statistics from.")
    gathered = {"disc_logit": disc_all, "residual": residual_all}
    if with_features:
        gathered["pooled_features"] = evenly_divisible_all_gather(torch.cat(pooled), concat=True)[:feature_max_images]
        if copies:  # each copy gathered like the originals, so row j of the result is a copy of image j % count
            count = gathered["pooled_features"].shape[0]
            gathered["augmented_features"] = torch.cat(
                [evenly_divisible_all_gather(torch.cat(copy), concat=True)[:count] for copy in augmented]
            )
    detector.update_statistics(gathered)
    statistics = detector.statistics
    logger.info(
        "score statistics over %d training images: disc logit %.4f +- %.4f, recon score %.4f +- %.4f "
        "(residual std per pixel %.4f to %.4f, median %.4f, plus the floor %g x median)%s",
        seen, *(float(v) for v in (statistics.mean[0], statistics.std[0], statistics.mean[1], statistics.std[1],
                                    statistics.pixel_std.min(), statistics.pixel_std.max(),
                                    statistics.pixel_std.median(), statistics.std_floor)),
        f"; feature statistics over {gathered['pooled_features'].shape[0]} images and {copies} augmented copies of "
        f"each: feature score {float(statistics.density.score_mean):.4f} +- "
        f"{float(statistics.density.score_std):.4f}"
        if with_features else "",
    )


class ScoreStatisticsHandler:
    """Measures the detector's score statistics when an evaluator starts, so its scores are normalised.

    Args:
        detector: the detector whose ``statistics`` are updated.
        data_loader: un-augmented normal training images.
        max_images: how many images (the method measures them on up to 200: ``docs/method.md``, "Scoring").
        only_if_missing: skip when the statistics are already there (e.g. loaded from a checkpoint).
        amp: autocast while scoring.
        feature_max_images: how many images the feature statistics are measured on (when the detector has them).
        augmentation: a MONAI array transform of one ``1 x H x W`` image giving the augmented copies (the
            training's random affine in the configs), or ``None`` for none.
        augmented_copies: how many augmented copies of each feature-statistics image join the bank of normal
            descriptors (0: none).
        seed: the augmentation's random state at every measurement.
    """

    def __init__(
        self,
        detector: AnomalyDetector,
        data_loader: Iterable,
        max_images: int = 200,
        only_if_missing: bool = False,
        amp: bool = False,
        feature_max_images: int = 2000,
        augmentation: Randomizable | None = None,
        augmented_copies: int = 0,
        seed: int = 0,
    ) -> None:
        self.detector = detector
        self.data_loader = data_loader
        self.max_images = max_images
        self.only_if_missing = only_if_missing
        self.amp = amp
        self.feature_max_images = feature_max_images
        self.augmentation = augmentation
        self.augmented_copies = augmented_copies
        self.seed = seed

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.only_if_missing and bool(unwrap(self.detector).statistics.ready):
            logger.info("score statistics loaded with the checkpoint; not recomputed (evaluation measures them again "
                        "with '--remeasure_statistics true').")
            return
        compute_score_statistics(self.detector, self.data_loader, engine.state.device, self.max_images, self.amp,
                                 self.feature_max_images, self.augmentation, self.augmented_copies, self.seed)


class ScoreCollector:
    """Gathers per-image scores and labels from an :class:`~scripts.engines.AnomalyEvaluator` each epoch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._gather)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def _gather(self, engine: Engine) -> None:
        """Under ``torch.distributed``, every rank gets the rows of all ranks (each rank scored its shard)."""
        self.rows = gather_objects(self.rows)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        names = ("disc_logit", "recon_error", "feature_score") + tuple(f"score_{k}" for k in SCORE_KINDS)
        columns = {k: out[k].detach().float().cpu().numpy() for k in names if k in out}
        labels = out["label"].cpu().numpy()
        kinds = out.get("kind") or [""] * len(labels)
        for i, name in enumerate(out["filename"]):
            self.rows.append({"file": name, "label": int(labels[i]), "kind": kinds[i],
                              **{k: float(v[i]) for k, v in columns.items()}})

    def kinds(self) -> tuple[str, ...]:
        """The score kinds the rows hold (those of the detector, ``SCORE_KINDS`` order)."""
        return tuple(k for k in SCORE_KINDS if self.rows and f"score_{k}" in self.rows[0])

    def scores(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(N scores of ``kind``, N labels) over the rows that have a label."""
        rows = [r for r in self.rows if r["label"] in (0, 1)]
        return np.array([r[f"score_{kind}"] for r in rows]), np.array([r["label"] for r in rows], dtype=np.int64)

    def epoch_completed(self, engine: Engine) -> None:
        """Act on the epoch's rows; subclasses override."""


class ThresholdSelector(ScoreCollector):
    """After each validation, stores the best-accuracy threshold of ``score_kind`` in the detector.

    Attach it before the checkpoint handler, so the best checkpoint holds the threshold of its epoch.
    The validation metrics at that threshold are added to the evaluator's metrics as ``val_<name>``.
    """

    def __init__(self, detector: AnomalyDetector, score_kind: str = "discriminator") -> None:
        super().__init__()
        self.detector = detector
        self.score_kind = score_kind

    def epoch_completed(self, engine: Engine) -> None:
        scores, labels = self.scores(self.score_kind)
        if labels.size == 0 or labels.min() == labels.max():
            logger.warning("validation split lacks normal or abnormal images: threshold left unchanged.")
            return
        point = best_accuracy_operating_point(scores, labels)
        unwrap(self.detector).statistics.threshold.fill_(point["threshold"])
        engine.state.metrics.update({f"val_{k}": v for k, v in point.items()})


class EvaluationReport(ScoreCollector):
    """Writes the evaluation results of a labelled split to ``output_dir`` when the evaluator finishes.

    Files: ``metrics.json`` (per score kind: AUC with its 95 % stratified-bootstrap confidence interval
    ``auc_ci95`` and, at the best-accuracy threshold, accuracy, F1,
    sensitivity, specificity, precision and the threshold; the metrics at the model's stored
    threshold; ``per_finding``: the AUC and interval of the normal images against each finding kind, when the
    datalist gives kinds; and ``pixel``: the pixel-level AUROC and the AUPRO up to FPR 0.3 (``PixelAUPRO``: the
    overlap with each connected lesion region, averaged over the regions) of the maps of ``PIXEL_MAPS`` against
    the lesion masks, with the number of regions, when the datalist gives masks; the map written for users enters
    as ``m / (1 + m)``, monotone into [0, 1), as the binned metrics need), ``scores.csv`` (per image: file, label,
    kind, raw and normalised scores, decision), ``roc.png``, ``score_histogram.png`` and ``cases.png`` (input /
    reconstruction / anomaly map of the most and least abnormal-looking normal and abnormal images).

    Args:
        output_dir: destination folder (created).
        detector: the evaluated detector (for its score kind and stored threshold).
        cases_per_group: how many images per group in ``cases.png``.
        overwrite: replace the files of an earlier evaluation in ``output_dir`` (``"true"``/``"false"``
            strings are read as booleans).

    Raises:
        FileExistsError: ``output_dir`` already holds one of the files and ``overwrite`` is not set; raised
            when the report is created, before any image is scored.
    """

    FILES: tuple[str, ...] = ("metrics.json", "scores.csv", "roc.png", "score_histogram.png", "cases.png")

    def __init__(
        self,
        output_dir: str | os.PathLike,
        detector: AnomalyDetector,
        cases_per_group: int = 3,
        overwrite: bool = False,
    ) -> None:
        super().__init__()
        overwrite = as_bool(overwrite, "overwrite")
        existing = [name for name in self.FILES if (Path(output_dir) / name).exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"{output_dir} already holds the results of an earlier evaluation ({', '.join(existing)}). "
                "Write this one elsewhere with '--eval_output_dir <new folder>', or replace them with "
                "'--overwrite true'."
            )
        self.output_dir = Path(output_dir)
        self.detector = detector
        self.cases_per_group = cases_per_group
        self.cases: list[dict[str, Any]] = []
        self.pixel = {name: PixelAUROC() for name in PIXEL_MAPS}
        self.pro = {name: PixelAUPRO() for name in PIXEL_MAPS}

    def _reset(self, engine: Engine) -> None:
        super()._reset(engine)
        self.cases = []
        for accumulator in (*self.pixel.values(), *self.pro.values()):
            accumulator.reset()

    def _collect(self, engine: Engine) -> None:
        super()._collect(engine)
        out = engine.state.output
        self._count_pixels(out)
        kind = unwrap(self.detector).score_kind
        scores = out[f"score_{kind}"].float().cpu()
        for i in range(scores.shape[0]):
            self.cases.append({
                "score": float(scores[i]),
                "label": int(out["label"][i]),
                "file": out["filename"][i],
                "images": [out[k][i, 0].float().cpu() for k in ("image", "recon", "anomaly_map")],
            })
        self._trim_cases()

    def _count_pixels(self, out: dict[str, Any]) -> None:
        """Add the maps of the images whose lesion mask is known to the pixel-level AUROCs and AUPROs."""
        if "mask" not in out:
            return
        known = torch.as_tensor(out["mask_known"]).bool().reshape(-1).cpu()
        if not known.any():
            return
        masks = torch.as_tensor(out["mask"])[known]
        z2 = unwrap(self.detector).statistics.standardise(out["residual"].float()).square()
        anomaly = out["anomaly_map"].float()
        residual = (out["image"].float() - out["recon"].float()).abs()
        maps = {"anomaly_map": anomaly / (1 + anomaly), "residual": residual, "z_score": z2 / (1 + z2)}  # into [0, 1)
        regions = connected_components(masks)  # labelled once for the three maps
        for name, values in maps.items():
            self.pixel[name].update(values.cpu()[known], masks)
            self.pro[name].update(values.cpu()[known], masks, regions)

    def _gather(self, engine: Engine) -> None:
        """Rows and pixel accumulators of all ranks (each rank scored its shard)."""
        super()._gather(engine)
        for accumulators in (self.pixel, self.pro):
            for name, accumulator in accumulators.items():
                merged, *others = gather_objects([accumulator])  # every rank's, in rank order
                for other in others:
                    merged.merge(other)
                accumulators[name] = merged

    def _trim_cases(self) -> None:
        """Keep only the extreme cases of each label (highest and lowest scores)."""
        k = self.cases_per_group
        kept = []
        for label in (0, 1):
            group = sorted((c for c in self.cases if c["label"] == label), key=lambda c: c["score"])
            kept += group if len(group) <= 2 * k else group[:k] + group[-k:]
        self.cases = kept

    def epoch_completed(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        detector = unwrap(self.detector)
        threshold = float(detector.statistics.threshold)
        metrics: dict[str, Any] = {"score_kind": detector.score_kind, "stored_threshold": threshold}
        curves = {}
        for kind in self.kinds():
            scores, labels = self.scores(kind)
            if labels.size == 0:
                continue
            metrics[kind] = detection_metrics(scores, labels)
            metrics[kind]["auc_ci95"] = list(auc_confidence_interval(scores, labels))
            if kind == detector.score_kind:
                metrics[kind]["at_stored_threshold"] = detection_metrics(scores, labels, threshold)
            if labels.min() != labels.max():
                curves[kind] = (scores, labels)
        self._add_per_finding(metrics)
        pixel = {name: accumulator.compute() for name, accumulator in self.pixel.items()}
        pro = {name: accumulator.compute() for name, accumulator in self.pro.items()}
        if any(math.isfinite(v) for v in pixel.values()):
            metrics["pixel"] = {"auroc": pixel, "aupro": pro, "num_regions": self.pro["anomaly_map"].num_regions,
                                "num_lesion_pixels": int(self.pixel["anomaly_map"].counts[1].sum()),
                                "num_other_pixels": int(self.pixel["anomaly_map"].counts[0].sum())}
        with open(self.output_dir / "metrics.json", "w") as f:
            json.dump(_finite_or_none(metrics), f, indent=2)
        self._write_csv(threshold, detector.score_kind)
        if curves:
            save_roc_curve(curves, self.output_dir / "roc.png")
            save_score_histogram(curves, self.output_dir / "score_histogram.png")
        if self.cases:
            save_case_grid(self.cases, self.output_dir / "cases.png")
        engine.state.metrics.update({f"test_auc_{k}": metrics[k]["auc"] for k in SCORE_KINDS if k in metrics})
        logger.info("evaluation of %d images written to %s: %s%s", len(self.rows), self.output_dir,
                    {k: round(metrics[k]["auc"], 4) for k in SCORE_KINDS if k in metrics},
                    f", pixel AUROC {({k: round(v, 4) for k, v in pixel.items()})}, AUPRO up to FPR "
                    f"{self.pro['anomaly_map'].max_fpr:g} {({k: round(v, 4) for k, v in pro.items()})} over "
                    f"{self.pro['anomaly_map'].num_regions} lesion regions" if "pixel" in metrics else "")

    def _add_per_finding(self, metrics: dict[str, Any]) -> None:
        """Each score's AUC (and interval) of the normal images against each finding kind, when rows have kinds."""
        kinds = [r["kind"] for r in self.rows if r["label"] in (0, 1)]  # the rows of scores(), in their order
        _, labels = self.scores(SCORE_KINDS[0])
        if not any(kind for kind, y in zip(kinds, labels) if y == 1):
            return
        subsets = {kind: s for kind, s in finding_subsets(labels, kinds).items() if kind != "overall"}
        for score in self.kinds():
            if score not in metrics:
                continue
            values, _ = self.scores(score)
            metrics[score]["per_finding"] = {
                kind: {"auc": auc_or_nan(values[keep], y), "auc_ci95": list(auc_confidence_interval(values[keep], y)),
                       "num_abnormal": int(y.sum())}
                for kind, (keep, y) in subsets.items()
            }

    def _write_csv(self, threshold: float, kind: str) -> None:
        raw = [k for k in ("disc_logit", "recon_error", "feature_score") if self.rows and k in self.rows[0]]
        columns = ["file", "label", "kind", *raw, *(f"score_{k}" for k in self.kinds()), "decision"]
        with open(self.output_dir / "scores.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in self.rows:
                decision = "abnormal" if row[f"score_{kind}"] >= threshold else "normal"
                writer.writerow({**row, "decision": decision})


def _finite_or_none(obj: Any) -> Any:
    """Replace NaN/inf by ``None`` so the JSON is standard."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
