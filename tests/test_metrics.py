"""Detection metrics against definitions computed independently in the test."""

import itertools

import numpy as np
import pytest
import torch

from benchmarks.quality_stats import paired_auc_difference
from scripts.metrics import (
    _stratified_weights,
    _weighted_aucs,
    auc_confidence_interval,
    auc_or_nan,
    best_accuracy_operating_point,
    bootstrap_aucs,
    connected_components,
    detection_metrics,
    finding_subsets,
    PixelAUPRO,
    PixelAUROC,
    roc_curve,
)


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


def test_weighted_auc_equals_auc_of_the_materialised_resample():
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(25, int), np.ones(15, int)]
    scores = np.round(rng.normal(size=40) + labels, 1)  # ties within and across classes
    weights = _stratified_weights(labels, 6, rng)
    assert np.all(weights[:, labels == 0].sum(1) == 25) and np.all(weights[:, labels == 1].sum(1) == 15)
    aucs = _weighted_aucs(scores, labels, weights)
    for w, auc in zip(weights, aucs):
        assert auc == pytest.approx(_pairwise_auc(np.repeat(scores, w), np.repeat(labels, w)), abs=1e-12)
    assert len(set(np.round(aucs, 9))) > 1  # the resamples differ


def _delong_variance(scores, labels):
    """DeLong's nonparametric variance of the AUC (placement values), computed independently."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    h = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return h.mean(1).var(ddof=1) / pos.size + h.mean(0).var(ddof=1) / neg.size


def test_bootstrap_spread_matches_delong_variance():
    rng = np.random.default_rng(5)
    labels = np.r_[np.zeros(200, int), np.ones(60, int)]
    scores = rng.normal(size=260) + 0.8 * labels
    aucs = bootstrap_aucs(scores, labels, num_resamples=3000, seed=1)
    assert aucs.std() == pytest.approx(np.sqrt(_delong_variance(scores, labels)), rel=0.1)
    assert aucs.mean() == pytest.approx(auc_or_nan(scores, labels), abs=0.005)
    low, high = auc_confidence_interval(scores, labels, num_resamples=3000, seed=1)
    assert (low, high) == pytest.approx(tuple(np.quantile(aucs, [0.025, 0.975])))
    assert low < auc_or_nan(scores, labels) < high
    # four times the images: about half the width
    big_labels = np.tile(labels, 4)
    big_scores = rng.normal(size=big_labels.size) + 0.8 * big_labels
    big_low, big_high = auc_confidence_interval(big_scores, big_labels, num_resamples=3000, seed=1)
    assert (big_high - big_low) / (high - low) == pytest.approx(0.5, abs=0.1)


def test_bootstrap_is_seeded_and_paired_across_scores():
    rng = np.random.default_rng(6)
    labels = np.r_[np.zeros(50, int), np.ones(20, int)]
    a, b = rng.normal(size=70) + labels, rng.normal(size=70) + 0.5 * labels
    both = bootstrap_aucs(np.stack([a, b]), labels, num_resamples=300, seed=3, chunk=70)
    assert both.shape == (2, 300)
    np.testing.assert_array_equal(both[0], bootstrap_aucs(a, labels, num_resamples=300, seed=3, chunk=70))
    assert not np.array_equal(both[0], bootstrap_aucs(a, labels, num_resamples=300, seed=4, chunk=70))
    with pytest.raises(ValueError, match="normal and abnormal"):
        bootstrap_aucs(a, np.zeros(70, int))
    assert np.isnan(auc_confidence_interval([0.1, 0.2], [1, 1])).all()


def test_paired_difference_cancels_what_two_scores_share():
    rng = np.random.default_rng(7)
    labels = np.r_[np.zeros(150, int), np.ones(40, int)]
    a = rng.normal(size=190) + labels
    same = paired_auc_difference(a, a, labels, num_resamples=500)
    assert {k: same[k] for k in ("difference", "low", "high", "fraction_not_above_zero")} == {
        "difference": 0.0, "low": 0.0, "high": 0.0, "fraction_not_above_zero": 1.0}
    assert same["interval_a"] == same["interval_b"] == auc_confidence_interval(a, labels, num_resamples=500)
    b = a + rng.normal(scale=0.3, size=190)  # nearly the same ranking: the paired interval is narrow
    paired = paired_auc_difference(a, b, labels, num_resamples=1000)
    low_a, high_a = auc_confidence_interval(a, labels, num_resamples=1000)
    assert paired["difference"] == pytest.approx(auc_or_nan(a, labels) - auc_or_nan(b, labels))
    assert paired["low"] <= paired["difference"] <= paired["high"]
    assert paired["high"] - paired["low"] < 0.5 * (high_a - low_a)
    # each score's own interval comes from the same resamples as the difference
    assert paired["interval_a"] == (low_a, high_a)
    assert paired["interval_b"] == auc_confidence_interval(b, labels, num_resamples=1000)
    assert paired["interval_a"] != paired["interval_b"]
    better = paired_auc_difference(a + 2 * labels, a, labels, num_resamples=500)  # a strictly better score
    assert better["low"] > 0 and better["fraction_not_above_zero"] == 0.0


def test_finding_subsets_pair_the_normals_with_one_kind():
    labels = [0, 1, 1, 0, 1, 0]
    kinds = ["normal", "nodule", "effusion", "normal", "nodule", "whatever"]  # a normal's kind is ignored
    subsets = finding_subsets(labels, kinds)
    assert list(subsets) == ["overall", "nodule", "effusion"]
    keep, y = subsets["overall"]
    assert keep.all() and y.tolist() == labels
    keep, y = subsets["nodule"]
    assert np.flatnonzero(keep).tolist() == [0, 1, 3, 4, 5] and y.tolist() == [0, 1, 0, 1, 0]
    keep, y = subsets["effusion"]
    assert np.flatnonzero(keep).tolist() == [0, 2, 3, 5] and y.tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError, match="differ"):
        finding_subsets([0, 1], ["normal"])


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


def test_pixel_auroc_matches_the_exact_auc_in_any_batching() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((6, 1, 20, 20)) < 0.1
    maps = np.clip(0.3 * masks + rng.normal(0.35, 0.15, masks.shape), 0, 1)  # lesions brighter, overlapping
    exact = auc_or_nan(maps.reshape(-1), masks.reshape(-1).astype(int))
    assert 0.7 < exact < 0.99  # neither chance nor perfect: agreement below means something
    whole, split = PixelAUROC(), PixelAUROC()
    whole.update(maps, masks)
    for i in range(0, 6, 4):
        split.update(maps[i:i + 4], masks[i:i + 4])
    assert whole.compute() == pytest.approx(exact, abs=1e-3)
    assert split.compute() == whole.compute()
    other = PixelAUROC()
    other.update(1 - maps, masks)  # reversed maps rank every lesion pixel the other way
    assert other.compute() == pytest.approx(1 - exact, abs=1e-3)
    merged = PixelAUROC()
    merged.merge(whole)
    assert merged.compute() == whole.compute()


def test_pixel_auroc_edge_cases() -> None:
    perfect = PixelAUROC()
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 2:4, 2:4] = True
    perfect.update(np.where(masks, 0.9, 0.1), masks)
    assert perfect.compute() == 1.0
    ties = PixelAUROC()
    ties.update(np.full((1, 8, 8), 0.5), masks)  # one value everywhere: chance, ties counted half
    assert ties.compute() == pytest.approx(0.5)
    clipped = PixelAUROC()
    clipped.update(np.where(masks, 7.0, -3.0), masks)  # out of [0, 1]: clipped into the end bins
    assert clipped.compute() == 1.0
    assert np.isnan(PixelAUROC().compute())
    normals_only = PixelAUROC()
    normals_only.update(np.random.default_rng(1).random((2, 8, 8)), np.zeros((2, 8, 8), bool))
    assert np.isnan(normals_only.compute())
    with pytest.raises(ValueError, match="differ in size"):
        PixelAUROC().update(np.zeros((2, 8, 8)), masks)


def _flood_fill_regions(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 8-connected regions of one 2-D boolean mask by flood fill, each as (rows, columns) of its pixels."""
    seen = np.zeros(mask.shape, bool)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, pixels = [start], []
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for rr in range(max(r - 1, 0), min(r + 2, mask.shape[0])):
                for cc in range(max(c - 1, 0), min(c + 2, mask.shape[1])):
                    if mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
        regions.append(tuple(np.array(pixels).T))
    return regions


def _exact_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """AUPRO with a threshold at every distinct map value (flagged: value >= threshold), PRO linear between
    thresholds and cut at ``max_fpr``, over the flood-filled regions of each ``H x W`` mask."""
    maps, masks = maps.reshape(-1, *maps.shape[-2:]), masks.reshape(-1, *masks.shape[-2:])
    thresholds = np.unique(maps)[::-1]

    def flagged_fraction(values: np.ndarray) -> np.ndarray:  # per threshold, the fraction of values >= it
        return 1 - np.searchsorted(np.sort(values), thresholds, side="left") / values.size

    fpr = np.concatenate([[0.0], flagged_fraction(maps[~masks])])
    overlaps = [flagged_fraction(image[region]) for image, mask in zip(maps, masks)
                for region in _flood_fill_regions(mask)]
    pro = np.concatenate([[0.0], np.mean(overlaps, axis=0)])
    area = 0.0
    for x0, x1, y0, y1 in zip(fpr[:-1], fpr[1:], pro[:-1], pro[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            x1, y1 = max_fpr, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def _lesions_and_maps(seed: int, num_images: int = 6, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``N x 1 x size x size`` with 2-4 random rectangles per image (some merge; the last image is normal) and
    maps ``noise + a different brightness per region``, both in [0, 1]."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_images, 1, size, size), bool)
    for mask in masks[:-1, 0]:
        for _ in range(rng.integers(2, 5)):
            (h, w), (r, c) = rng.integers(1, 7, 2), rng.integers(0, size - 6, 2)
            mask[r:r + h, c:c + w] = True
    maps = rng.normal(0.35, 0.15, masks.shape)
    for image, mask in zip(maps[:, 0], masks[:, 0]):
        for region in _flood_fill_regions(mask):
            image[region] += rng.uniform(0.0, 0.5)
    return np.clip(maps, 0, 1), masks


def test_connected_components_use_8_connectivity_per_image() -> None:
    diagonal = np.zeros((1, 4, 4), bool)
    diagonal[0, 0, 0] = diagonal[0, 1, 1] = True  # touch only at a corner
    labels = connected_components(diagonal)
    assert labels.dtype == torch.int64 and labels.shape == diagonal.shape
    assert labels[0, 0, 0] == labels[0, 1, 1] == 1 and int(labels.max()) == 1
    blobs = np.zeros((2, 1, 6, 7), bool)
    blobs[:, 0, 1:4, 0:2] = True
    blobs[:, 0, 2:5, 3:6] = True  # an empty column between the blobs
    labels = connected_components(blobs)[:, 0]
    assert labels.shape == (2, 6, 7) and int(labels.max()) == 4  # two per image, the images labelled apart
    assert len({int(labels[i][region].unique().item()) for i in range(2) for region in
                (blobs[i, 0] & (np.arange(7) < 2), blobs[i, 0] & (np.arange(7) > 2))}) == 4
    assert not labels[~blobs[:, 0]].any()
    assert not connected_components(np.zeros((3, 5, 5))).any()


def test_connected_components_match_a_flood_fill() -> None:
    masks = np.random.default_rng(4).random((5, 40, 40)) < 0.45  # near percolation: long winding regions
    labels = connected_components(masks).numpy()
    expected = [_flood_fill_regions(mask) for mask in masks]
    assert labels.max() == sum(len(regions) for regions in expected) > 20
    seen = set()
    for image, regions in zip(labels, expected):
        for region in regions:
            values = np.unique(image[region])
            assert values.size == 1 and values[0] not in seen  # one label per region, no label shared
            seen.add(values[0])


def test_pixel_aupro_matches_the_exact_aupro_in_any_batching() -> None:
    maps, masks = _lesions_and_maps(seed=0)
    exact = _exact_aupro(maps, masks)
    assert 0.3 < exact < 0.9  # neither chance (0.15) nor perfect: agreement below means something
    whole, split = PixelAUPRO(), PixelAUPRO()
    whole.update(maps, masks)
    for i in range(0, 6, 4):
        split.update(maps[i:i + 4], masks[i:i + 4])
    assert whole.num_regions == sum(len(_flood_fill_regions(m)) for m in masks[:, 0]) > 10
    assert whole.compute() == pytest.approx(exact, abs=1e-3)  # bins of 1e-4
    assert split.compute() == pytest.approx(whole.compute(), rel=1e-12)
    precomputed = PixelAUPRO()
    precomputed.update(maps, masks, regions=connected_components(masks))
    assert precomputed.compute() == whole.compute()
    wide = PixelAUPRO(max_fpr=1.0)
    wide.update(maps, masks)
    assert wide.compute() == pytest.approx(_exact_aupro(maps, masks, max_fpr=1.0), abs=1e-3)


def test_pixel_aupro_is_exact_when_values_sit_in_distinct_bins() -> None:
    """Values at bin centres, many tied: the bin edges are the distinct values' thresholds, so no binning error."""
    maps, masks = _lesions_and_maps(seed=1)
    num_bins = 20
    centred = (np.minimum(np.floor(maps * num_bins), num_bins - 1) + 0.5) / num_bins
    metric = PixelAUPRO(num_bins=num_bins)
    metric.update(centred, masks)
    assert metric.compute() == pytest.approx(_exact_aupro(centred, masks), rel=1e-9)


def test_pixel_aupro_merge_of_halves_equals_one_accumulator() -> None:
    maps, masks = _lesions_and_maps(seed=2)
    whole, first, second = PixelAUPRO(), PixelAUPRO(), PixelAUPRO()
    whole.update(maps, masks)
    first.update(maps[:3], masks[:3])
    second.update(maps[3:], masks[3:])
    first.merge(second)
    assert first.num_regions == whole.num_regions and np.array_equal(first.other, whole.other)
    assert first.compute() == pytest.approx(whole.compute(), rel=1e-12)
    first.reset()
    assert first.num_regions == 0 and np.isnan(first.compute())


def test_pixel_aupro_weighs_every_region_the_same() -> None:
    """One of two regions found: 0.5, whatever their sizes (pooling their pixels would give 144/148 or 4/148)."""
    masks = np.zeros((1, 32, 32), bool)
    masks[0, 2:14, 2:14] = True  # 144 pixels
    masks[0, 25:27, 25:27] = True  # 4 pixels
    large = np.zeros_like(masks)
    large[0, 2:14, 2:14] = True
    background = np.random.default_rng(5).uniform(0.1, 0.6, masks.shape)
    for found in (large, masks & ~large):
        metric = PixelAUPRO()
        metric.update(np.where(found, 0.9, np.where(masks, 0.05, background)), masks)  # the other below all else
        assert metric.num_regions == 2
        assert metric.compute() == pytest.approx(0.5, abs=1e-9)


def test_pixel_aupro_edge_cases() -> None:
    maps, masks = _lesions_and_maps(seed=3)
    perfect, reversed_, unrelated = PixelAUPRO(), PixelAUPRO(), PixelAUPRO()
    perfect.update(masks.astype(float), masks)  # 1 inside the regions, 0 outside
    assert perfect.compute() == pytest.approx(1.0, rel=1e-12)  # sums of 1 / region size: rounding only
    reversed_.update(1.0 - masks, masks)
    assert reversed_.compute() == 0.0
    rng = np.random.default_rng(6)
    big = np.zeros((8, 64, 64), bool)
    big[:, 8:40, 10:30] = big[:, 45:60, 40:60] = True
    unrelated.update(rng.random(big.shape), big)  # PRO follows FPR: area max_fpr^2 / 2, over max_fpr
    assert unrelated.compute() == pytest.approx(0.15, abs=0.02)
    assert np.isnan(PixelAUPRO().compute())
    normals_only, lesions_only = PixelAUPRO(), PixelAUPRO()
    normals_only.update(maps[-1:], masks[-1:])  # no region
    assert normals_only.num_regions == 0 and np.isnan(normals_only.compute())
    lesions_only.update(np.full((1, 8, 8), 0.7), np.ones((1, 8, 8)))  # no other pixel
    assert lesions_only.num_regions == 1 and np.isnan(lesions_only.compute())
    with pytest.raises(ValueError, match="differ in shape"):
        PixelAUPRO().update(np.zeros((2, 8, 8)), np.zeros((1, 8, 8)))
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="max_fpr"):
            PixelAUPRO(max_fpr=bad)
