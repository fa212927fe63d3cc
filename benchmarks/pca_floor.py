"""PCA reconstruction-error floor: the baseline a learned anomaly detector has to beat.

PCA is fitted on the normal training images at a small size (reference: 80 components at 64 x 64); a test
image's anomaly score is the mean squared error of its projection onto those components.  The AUC is
reported overall and per finding kind (the normal test images against the images of one kind).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scripts.metrics import auc_or_nan, finding_subsets

__all__ = ["to_feature_matrix", "fit_pca", "pca_reconstruction_error", "pca_scores", "pca_auc_by_finding"]


def to_feature_matrix(images: Sequence[np.ndarray] | np.ndarray, size: int) -> np.ndarray:
    """Resize 2-D images (each H x W, any size) to ``size x size`` with anti-aliasing and flatten them.

    Returns:
        float64 array (N, size * size).
    """
    rows = []
    for image in images:
        x = torch.as_tensor(np.asarray(image, dtype=np.float32))
        if x.ndim != 2:
            raise ValueError(f"Expected 2-D images, got shape {tuple(x.shape)}.")
        x = F.interpolate(x[None, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        rows.append(x.reshape(-1).numpy())
    return np.stack(rows).astype(np.float64)


def fit_pca(features: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the rows of ``features`` (N x D).

    Uses the eigendecomposition of the smaller of the Gram (N x N) and covariance (D x D) matrices, which
    is much cheaper than an SVD of the data when N and D differ.

    Returns:
        mean (D,) and components (K x D, orthonormal rows, by decreasing variance),
        K = min(n_components, number of non-zero-variance directions).
    """
    mean = features.mean(axis=0)
    centred = features - mean
    n, d = centred.shape
    gram = centred @ centred.T if n <= d else centred.T @ centred
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1][:n_components]
    order = order[eigenvalues[order] > eigenvalues.max(initial=0.0) * 1e-12]
    if n <= d:
        components = (eigenvectors[:, order].T @ centred) / np.sqrt(eigenvalues[order])[:, None]
    else:
        components = eigenvectors[:, order].T
    return mean, components


def pca_reconstruction_error(features: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Mean squared error (N,) between each row of ``features`` (N x D) and its PCA reconstruction."""
    centred = features - mean
    residual = centred - (centred @ components.T) @ components
    return np.mean(residual**2, axis=1)


def pca_scores(
    train_images: Sequence[np.ndarray] | np.ndarray,
    test_images: Sequence[np.ndarray] | np.ndarray,
    n_components: int = 80,
    size: int = 64,
) -> np.ndarray:
    """PCA reconstruction error (N,) of each test image, PCA fitted on ``train_images`` (each 2-D) at ``size``."""
    mean, components = fit_pca(to_feature_matrix(train_images, size), n_components)
    return pca_reconstruction_error(to_feature_matrix(test_images, size), mean, components)


def pca_auc_by_finding(
    train_images: Sequence[np.ndarray] | np.ndarray,
    test_images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[int],
    kinds: Sequence[str],
    n_components: int = 80,
    size: int = 64,
) -> dict[str, float]:
    """AUC of the PCA reconstruction error, overall and per finding kind.

    Args:
        train_images: normal training images, each 2-D (H x W) with intensities in a common range.
        test_images: test images, each 2-D.
        labels: per test image, 0 normal or 1 abnormal.
        kinds: per test image, its finding kind (any string for abnormal ones; ignored for normal ones).
        n_components: number of principal components.
        size: images are resized to ``size x size`` first.

    Returns:
        ``{"overall": auc, <kind>: auc, ...}``: a kind's AUC compares the normal test images with the
        images of that kind; kinds in order of first appearance; NaN where a class is missing.
    """
    labels_ = np.asarray(labels, dtype=np.int64)
    if not (len(labels_) == len(kinds) == len(test_images)):
        raise ValueError(f"test_images ({len(test_images)}), labels ({len(labels_)}) and kinds ({len(kinds)}) differ.")
    scores = pca_scores(train_images, test_images, n_components, size)
    return {kind: auc_or_nan(scores[keep], y) for kind, (keep, y) in finding_subsets(labels_, kinds).items()}
