"""Detection metrics against definitions computed independently in the test."""

import itertools

import numpy as np
import pytest

from scripts.metrics import auc_or_nan, best_accuracy_operating_point, detection_metrics, roc_curve


def _pairwise_auc(scores, labels):
    """AUC as the probability that an abnormal image outscores a normal one (ties count half)."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=60) + labels, 1)  # rounding creates ties
    assert auc_or_nan(scores, labels) == pytest.approx(_pairwise_auc(scores, labels), abs=1e-9)


def test_auc_nan_with_one_class():
    assert np.isnan(auc_or_nan([0.1, 0.4], [0, 0]))


def test_roc_curve_endpoints_and_monotone():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    fpr, tpr, thr = roc_curve(scores, labels)
    assert (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # trapezoidal area equals the AUC
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc_or_nan(scores, labels))


def test_best_accuracy_threshold_separates_separable_scores():
    scores = [0.1, 0.2, 0.3, 0.7, 0.8]
    labels = [0, 0, 0, 1, 1]
    point = best_accuracy_operating_point(scores, labels)
    assert 0.3 < point["threshold"] < 0.7
    assert point["accuracy"] == 1.0 and point["f1"] == 1.0
    assert point["sensitivity"] == 1.0 and point["specificity"] == 1.0 and point["precision"] == 1.0


def test_metrics_at_given_threshold_match_confusion_counts():
    scores = np.array([0.1, 0.6, 0.3, 0.7, 0.2, 0.9])
    labels = np.array([0, 0, 1, 1, 0, 1])
    m = detection_metrics(scores, labels, threshold=0.5)
    # predicted abnormal: 0.6 (FP), 0.7 (TP), 0.9 (TP); 0.3 is FN; 0.1 and 0.2 TN
    tp, fp, fn, tn = 2, 1, 1, 2
    assert m["accuracy"] == pytest.approx((tp + tn) / 6)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["num_images"] == 6 and m["num_abnormal"] == 3


def test_best_accuracy_is_maximal_over_all_thresholds():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = rng.normal(size=40) + 0.8 * labels
    best = best_accuracy_operating_point(scores, labels)["accuracy"]
    brute = max(np.mean((scores >= t) == (labels == 1)) for t in np.concatenate([scores, [np.inf]]))
    assert best == pytest.approx(brute)


def test_bad_labels_rejected():
    with pytest.raises(ValueError, match="labels"):
        auc_or_nan([0.1, 0.2], [0, 2])
