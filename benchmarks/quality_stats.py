"""The paired bootstrap difference of two scores' AUCs on the same images, which the quality benchmarks report
beside the bundle's own metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scripts.metrics import auc_or_nan, bootstrap_aucs, percentile_interval

__all__ = ["paired_auc_difference"]


def paired_auc_difference(
    scores_a: Sequence[float] | np.ndarray, scores_b: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
    level: float = 0.95, num_resamples: int = 2000, seed: int = 0,
) -> dict[str, Any]:
    """AUC of ``scores_a`` minus AUC of ``scores_b`` on the same images, with a paired bootstrap interval.

    Both scores are evaluated on the same resamples, so what the images have in common cancels out.

    Returns:
        ``{"difference", "low", "high", "fraction_not_above_zero", "interval_a", "interval_b"}``: the observed
        difference, its percentile interval at ``level``, the fraction of resamples in which ``a`` did not beat
        ``b`` (a one-sided bootstrap p-value for "a is better"), and each score's own AUC interval from the same
        resamples (equal to :func:`auc_confidence_interval` with the same ``seed``).
    """
    y = np.asarray(labels).reshape(-1)
    aucs = bootstrap_aucs(np.stack([np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)]), y,
                          num_resamples, seed)
    diffs = aucs[0] - aucs[1]
    low, high = percentile_interval(diffs, level)
    return {
        "difference": auc_or_nan(scores_a, y) - auc_or_nan(scores_b, y),
        "low": low,
        "high": high,
        "fraction_not_above_zero": float(np.mean(diffs <= 0)),
        "interval_a": percentile_interval(aucs[0], level),
        "interval_b": percentile_interval(aucs[1], level),
    }
