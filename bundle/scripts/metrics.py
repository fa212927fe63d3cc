"""Detection metrics: the image-level AUC (with its bootstrap interval, overall and per finding kind), the operating
point at the best-accuracy threshold, and the pixel-level AUROC and AUPRO of anomaly maps against lesion masks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_roc_auc

__all__ = [
    "roc_curve",
    "auc_or_nan",
    "bootstrap_aucs",
    "auc_confidence_interval",
    "percentile_interval",
    "finding_subsets",
    "PixelAUROC",
    "connected_components",
    "PixelAUPRO",
    "best_accuracy_operating_point",
    "detection_metrics",
]


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


def _weighted_aucs(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (Mann-Whitney, ties count one half) of ``scores`` for each row of multiplicities ``weights``.

    Row ``b`` of ``weights`` (R x N, integers) says how many copies of each image resample ``b`` holds; the
    midrank of every copy in the combined resample comes from the cumulative weight of the lower scores, so
    no resample is materialised.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1]]))
    w = weights[:, order].astype(np.float64)
    positive = (labels[order] == 1).astype(np.float64)
    tie_total = np.add.reduceat(w, starts, axis=1)  # R x G, weight of each group of equal scores
    tie_positive = np.add.reduceat(w * positive, starts, axis=1)
    below = np.cumsum(tie_total, axis=1) - tie_total
    rank_sum = np.sum(tie_positive * (below + (tie_total + 1) / 2), axis=1)
    n_pos = tie_positive.sum(1)
    n_neg = tie_total.sum(1) - n_pos
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _stratified_weights(labels: np.ndarray, num_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicities (R x N) of stratified bootstrap resamples: normals and abnormals resampled separately."""
    weights = np.zeros((num_resamples, labels.size), dtype=np.int32)
    for value in (0, 1):
        members = np.flatnonzero(labels == value)
        weights[:, members] = rng.multinomial(members.size, np.full(members.size, 1 / members.size), num_resamples)
    return weights


def bootstrap_aucs(
    scores: Sequence[float] | np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[int] | np.ndarray,
    num_resamples: int = 2000,
    seed: int = 0,
    chunk: int = 250,
) -> np.ndarray:
    """AUCs over stratified bootstrap resamples of the images (normals and abnormals each resampled with
    replacement to their own count), for one or several scores of the same images.

    Args:
        scores: N scores, or K x N (K scores of the same N images; every score sees the same resamples,
            so differences between them are paired).
        labels: N labels, 0 normal or 1 abnormal; both classes must be present.
        num_resamples: R.
        seed: seed of the resampling (same seed, same resamples).
        chunk: resamples computed at once (bounds memory at about ``chunk x N x 24`` bytes).

    Returns:
        R AUCs (for N scores) or K x R.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64)
    single = s.ndim == 1
    s = s.reshape(1, -1) if single else s
    for row in s:
        _as_arrays(row, y)
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("a bootstrap AUC needs normal and abnormal images.")
    rng = np.random.default_rng(seed)
    out = np.empty((s.shape[0], num_resamples))
    for begin in range(0, num_resamples, chunk):
        weights = _stratified_weights(y, min(chunk, num_resamples - begin), rng)
        for k, row in enumerate(s):
            out[k, begin : begin + weights.shape[0]] = _weighted_aucs(row, y, weights)
    return out[0] if single else out


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Central percentile interval ``(low, high)`` of ``values`` covering ``level``."""
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def auc_confidence_interval(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, level: float = 0.95,
    num_resamples: int = 2000, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` of the AUC; NaNs when a class is missing."""
    y = np.asarray(labels).reshape(-1)
    if y.size == 0 or y.min() == y.max():
        return float("nan"), float("nan")
    return percentile_interval(bootstrap_aucs(scores, y, num_resamples, seed), level)


def finding_subsets(
    labels: Sequence[int] | np.ndarray, kinds: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The image subsets that per-finding AUCs compare: all images, and the normals with one kind's images.

    Args:
        labels: per image, 0 normal or 1 abnormal.
        kinds: per image, its finding kind (any string for abnormal images; ignored for normal ones).

    Returns:
        ``{"overall": (keep, labels[keep]), <kind>: (keep, labels[keep]), ...}`` with boolean masks ``keep``;
        kinds in order of first appearance among the abnormal images.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    k = np.asarray(kinds, dtype=str).reshape(-1)
    if y.shape != k.shape:
        raise ValueError(f"labels ({y.size}) and kinds ({k.size}) differ in length.")
    subsets = {"overall": (np.ones(y.size, bool), y)}
    for kind in dict.fromkeys(k[y == 1].tolist()):
        keep = (y == 0) | ((y == 1) & (k == kind))
        subsets[kind] = keep, y[keep]
    return subsets


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


def _bin_index(values: np.ndarray, num_bins: int) -> np.ndarray:
    """The bin of each value among ``num_bins`` equal bins over ``[0, 1]`` (values outside go to the end bins)."""
    return np.clip((values * num_bins).astype(np.int64), 0, num_bins - 1)


class PixelAUROC:
    """Pixel-level AUROC of anomaly maps against lesion masks, accumulated batch by batch in fixed memory.

    Map values are counted in ``num_bins`` equal bins over ``[0, 1]`` (values outside are clipped), separately
    for lesion and other pixels; the AUROC is then that of the binned values, ties within a bin counted half
    (with 10,000 bins it differs from the exact value by well under 1e-3 for any map that is not constant over
    a large part of a bin). Maps with other ranges are mapped into ``[0, 1]`` monotonically first (an AUROC does
    not change under a monotone transform), e.g. ``z2 / (1 + z2)``.

    Args:
        num_bins: bins over ``[0, 1]``.
    """

    def __init__(self, num_bins: int = 10_000) -> None:
        self.num_bins = int(num_bins)
        self.reset()

    def reset(self) -> None:
        self.counts = np.zeros((2, self.num_bins), dtype=np.int64)  # row 0: other pixels, row 1: lesion pixels

    def update(self, maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor) -> None:
        """Count the pixels of maps ``B x ...`` in ``[0, 1]`` against boolean (or 0/1) masks of the same shape."""
        values = np.asarray(torch.as_tensor(maps).detach().float().cpu()).reshape(-1)
        lesion = np.asarray(torch.as_tensor(masks).detach().cpu()).reshape(-1) > 0.5
        if values.shape != lesion.shape:
            raise ValueError(f"maps ({values.size} values) and masks ({lesion.size}) differ in size.")
        index = _bin_index(values, self.num_bins)
        self.counts += np.stack([np.bincount(index[~lesion], minlength=self.num_bins),
                                 np.bincount(index[lesion], minlength=self.num_bins)])

    def merge(self, other: PixelAUROC) -> None:
        """Add the counts of another accumulator (another rank's)."""
        self.counts += other.counts

    def compute(self) -> float:
        """The AUROC; NaN without lesion pixels or without other pixels."""
        negative, positive = self.counts.astype(np.float64)
        if negative.sum() == 0 or positive.sum() == 0:
            return float("nan")
        below = np.cumsum(negative) - negative  # other pixels in lower bins
        wins = positive * (below + 0.5 * negative)
        return float(wins.sum() / (positive.sum() * negative.sum()))


def connected_components(masks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The connected regions (8-connectivity) of each 2-D mask, numbered across all masks.

    Every mask pixel starts with its own index in the image; a 3 x 3 max pool restricted to the mask spreads the
    largest index of each region over the region until nothing changes. Each step also gives every pixel the label
    of the pixel its label indexes (pointer jumping: that pixel is in the same region and its label is at least as
    large), so a region takes far fewer steps than its longest path (a disc of radius 100 pixels: 9 instead of 199).

    Args:
        masks: boolean (or 0/1) masks ``... x H x W``; every ``H x W`` slice is one image, whose regions are its own.

    Returns:
        int64 labels of the same shape: 0 outside the masks, ``1 .. N`` for the ``N`` regions of all images (image
        by image, in the order of the flattened leading dimensions), so ``labels.max()`` is the number of regions.
    """
    mask = torch.as_tensor(masks).detach().cpu() > 0.5
    if mask.ndim < 2:
        raise ValueError(f"masks must be ... x H x W, got shape {tuple(mask.shape)}.")
    height, width = mask.shape[-2:]
    flat = mask.reshape(-1, 1, height, width)
    labels = torch.zeros(flat.shape, dtype=torch.int64)
    some = flat.flatten(1).any(1)  # images without a mask pixel have no regions: skip them
    if not some.any():
        return labels.reshape(mask.shape)
    inside = flat[some]
    index = torch.arange(1, height * width + 1, dtype=torch.float64).reshape(1, 1, height, width)
    spread = torch.where(inside, index, 0.0)
    while True:
        grown = torch.where(inside, F.max_pool2d(spread, 3, stride=1, padding=1), 0.0)
        # pointer jumping: each pixel takes the label of the pixel its label indexes
        pointer = (grown.flatten(1).long() - 1).clamp(min=0)
        grown = torch.where(inside, grown.flatten(1).gather(1, pointer).reshape(grown.shape), 0.0)
        if torch.equal(grown, spread):
            break
        spread = grown
    image = torch.arange(inside.shape[0]).reshape(-1, 1, 1, 1).expand_as(inside)
    key = image[inside] * (height * width + 1) + spread[inside].long()  # unique per (image, region)
    region = torch.zeros(inside.shape, dtype=torch.int64)
    region[inside] = torch.unique(key, return_inverse=True)[1] + 1
    labels[some] = region
    return labels.reshape(mask.shape)


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the piecewise-linear curve through the points ``(x, y)`` (``x`` non-decreasing from ``x[0] = 0``)
    from 0 to ``x_max``, the curve's value at ``x_max`` interpolated linearly."""
    inside = int(np.searchsorted(x, x_max, side="right"))  # the points with x <= x_max
    xs, ys = x[:inside], y[:inside]
    if inside < x.size:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        xs = np.append(xs, x_max)
        ys = np.append(ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0))
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))


class PixelAUPRO:
    """Area under the per-region-overlap curve (AUPRO) of anomaly maps against lesion masks, as in the MVTec AD
    benchmark (Bergmann et al., IJCV 2021), accumulated batch by batch in fixed memory.

    The regions are the connected components (8-connectivity) of each image's mask, so two lesions of one image
    are two regions. A pixel is flagged at threshold ``t`` when its value is ``>= t``. ``FPR(t)`` is the fraction of
    the other pixels (of all images) flagged, ``PRO(t)`` the mean over the regions of the fraction of the region's
    pixels flagged: every region weighs the same, whatever its size. The AUPRO is the area under PRO against FPR,
    linear between thresholds, from FPR 0 to ``max_fpr`` (PRO interpolated there), divided by ``max_fpr``: 1 for a
    map that is higher on every lesion pixel than on any other pixel, about ``max_fpr / 2`` for a map unrelated to
    the masks.

    Values are binned like :class:`PixelAUROC`'s (``num_bins`` equal bins over ``[0, 1]``, values outside clipped),
    and the thresholds are the bin edges: the other pixels are counted per bin, and each lesion pixel adds
    ``1 / (its region's size)`` to its bin, so ``PRO`` at a threshold is the sum above it over the number of regions.
    With 10,000 bins this differs from the exact AUPRO (a threshold at every distinct value) only where lesion and
    other pixels share a bin. Maps with other ranges are mapped into ``[0, 1]`` monotonically first (the curve does
    not change under a monotone transform).

    Args:
        max_fpr: the FPR up to which the area is taken, in ``(0, 1]``; 0.3 is the benchmark's.
        num_bins: bins over ``[0, 1]``.
    """

    def __init__(self, max_fpr: float = 0.3, num_bins: int = 10_000) -> None:
        if not 0 < max_fpr <= 1:
            raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}.")
        self.max_fpr = float(max_fpr)
        self.num_bins = int(num_bins)
        self.reset()

    def reset(self) -> None:
        self.other = np.zeros(self.num_bins, dtype=np.int64)  # other pixels per bin
        self.overlap = np.zeros(self.num_bins, dtype=np.float64)  # per bin: sum of 1 / region size over its pixels
        self.num_regions = 0

    def update(
        self, maps: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor, regions: torch.Tensor | None = None
    ) -> None:
        """Count maps ``B x ... x H x W`` (values in ``[0, 1]``) against boolean (or 0/1) masks of the same shape.

        Args:
            maps: the anomaly maps; every ``H x W`` slice is one image.
            masks: the lesion masks.
            regions: ``connected_components(masks)`` when already computed (to score several maps of the same
                masks without labelling them again); ``masks`` is then not read.
        """
        values = np.asarray(torch.as_tensor(maps).detach().float().cpu())
        labels = connected_components(masks) if regions is None else torch.as_tensor(regions).cpu()
        if values.shape != tuple(labels.shape):
            raise ValueError(f"maps {values.shape} and masks {tuple(labels.shape)} differ in shape.")
        labels = np.asarray(labels).reshape(-1)
        index = _bin_index(values.reshape(-1), self.num_bins)
        lesion = labels > 0
        sizes = np.bincount(labels)
        self.other += np.bincount(index[~lesion], minlength=self.num_bins)
        self.overlap += np.bincount(index[lesion], weights=1.0 / sizes[labels[lesion]], minlength=self.num_bins)
        self.num_regions += int(np.count_nonzero(sizes[1:]))

    def merge(self, other: PixelAUPRO) -> None:
        """Add the regions and counts of another accumulator (another rank's)."""
        self.other += other.other
        self.overlap += other.overlap
        self.num_regions += other.num_regions

    def compute(self) -> float:
        """The AUPRO; NaN without regions or without other pixels."""
        num_other = self.other.sum()
        if self.num_regions == 0 or num_other == 0:
            return float("nan")
        # thresholds at the bin edges from above the top bin (nothing flagged) down to 0 (everything flagged)
        fpr = np.concatenate([[0.0], np.cumsum(self.other[::-1]) / num_other])
        pro = np.concatenate([[0.0], np.cumsum(self.overlap[::-1]) / self.num_regions])
        return _area_up_to(fpr, pro, self.max_fpr) / self.max_fpr
