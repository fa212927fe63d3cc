"""Image-level detection metrics: AUC and the operating point at the best-accuracy threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.metrics import compute_roc_auc
import torch

__all__ = ["roc_curve", "auc_or_nan", "best_accuracy_operating_point", "detection_metrics"]


def _as_arrays(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length.")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 (normal) or 1 (abnormal).")
    return s, y


def auc_or_nan(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (higher = more abnormal); NaN when a class is missing."""
    s, y = _as_arrays(scores, labels)
    if y.min(initial=1) == y.max(initial=0):
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(s), torch.as_tensor(y)))


def roc_curve(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of ``scores`` against binary ``labels``.

    Returns:
        false-positive rates, true-positive rates and the thresholds (``score >= threshold`` is abnormal),
        each of length (number of distinct scores + 1), starting at (0, 0) with threshold +inf.
    """
    s, y = _as_arrays(scores, labels)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    positives = max(int(y.sum()), 1)
    negatives = max(int((1 - y).sum()), 1)
    predicted = s[None, :] >= thresholds[:, None]
    tpr = (predicted & (y[None, :] == 1)).sum(1) / positives
    fpr = (predicted & (y[None, :] == 0)).sum(1) / negatives
    return fpr, tpr, thresholds


def best_accuracy_operating_point(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> dict[str, float]:
    """The threshold on ``scores`` with the highest accuracy (``score >= threshold`` is abnormal) and its metrics.

    Among equally accurate thresholds the midpoint between neighbouring distinct scores is returned, so
    the stored threshold generalises rather than sitting on one training score.
    """
    s, y = _as_arrays(scores, labels)
    if s.size == 0:
        raise ValueError("no scores to choose a threshold from.")
    distinct = np.unique(s)
    # candidate thresholds: below all scores, midpoints between neighbours, above all scores
    candidates = np.concatenate([[distinct[0] - 1e-6], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1e-6]])
    predicted = s[None, :] >= candidates[:, None]
    accuracy = (predicted == (y[None, :] == 1)).mean(1)
    best = int(np.argmax(accuracy))
    return {"threshold": float(candidates[best]), **_confusion_metrics(predicted[best], y)}


def _confusion_metrics(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    tp = float(np.sum(predicted & (labels == 1)))
    tn = float(np.sum(~predicted & (labels == 0)))
    fp = float(np.sum(predicted & (labels == 0)))
    fn = float(np.sum(~predicted & (labels == 1)))

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    precision = ratio(tp, tp + fp)
    sensitivity = ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "f1": f1,
        "sensitivity": sensitivity,
        "specificity": ratio(tn, tn + fp),
        "precision": precision,
    }


def detection_metrics(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """AUC plus accuracy, F1, sensitivity, specificity and precision at a threshold.

    Args:
        scores: per-image anomaly scores, higher = more abnormal.
        labels: 0 normal, 1 abnormal.
        threshold: the operating point; ``None`` picks the best-accuracy threshold on these scores.
    """
    s, y = _as_arrays(scores, labels)
    if threshold is None:
        point = best_accuracy_operating_point(s, y)
    else:
        point = {"threshold": float(threshold), **_confusion_metrics(s >= threshold, y)}
    return {"auc": auc_or_nan(s, y), "num_images": int(s.size), "num_abnormal": int(y.sum()), **point}
