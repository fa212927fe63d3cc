"""Tests of the PCA reconstruction-error floor (``benchmarks.pca_floor``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.pca_floor import fit_pca, pca_auc_by_finding, pca_reconstruction_error, pca_scores, to_feature_matrix


def _low_rank(rng: np.random.Generator, n: int, d: int, rank: int, basis: np.ndarray | None = None):
    basis = rng.standard_normal((rank, d)) if basis is None else basis
    return 3.0 + rng.standard_normal((n, rank)) @ basis, basis


@pytest.mark.parametrize("n, d", [(40, 100), (300, 20)])  # Gram path (n <= d) and covariance path
def test_fit_pca_recovers_a_low_rank_subspace(n, d):
    rng = np.random.default_rng(0)
    data, basis = _low_rank(rng, n, d, rank=3)
    mean, components = fit_pca(data, n_components=10)
    assert components.shape == (3, d)  # zero-variance directions are not returned
    np.testing.assert_allclose(components @ components.T, np.eye(3), atol=1e-8)
    # the span equals that of the generating basis: same orthogonal projector
    q, _ = np.linalg.qr(basis.T)
    np.testing.assert_allclose(components.T @ components, q @ q.T, atol=1e-8)
    np.testing.assert_allclose(mean, data.mean(0))
    new, _ = _low_rank(rng, 5, d, 3, basis)
    assert pca_reconstruction_error(new, mean, components).max() < 1e-16
    off = new + rng.standard_normal((5, d))
    assert pca_reconstruction_error(off, mean, components).min() > 0.1


def test_components_ordered_by_variance():
    rng = np.random.default_rng(1)
    scales = np.array([5.0, 2.0, 0.5])
    data = (rng.standard_normal((500, 3)) * scales) @ np.linalg.qr(rng.standard_normal((8, 3)))[0].T
    _, components = fit_pca(data, 2)
    variances = np.var((data - data.mean(0)) @ components.T, axis=0)
    np.testing.assert_allclose(variances, scales[:2] ** 2, rtol=0.15)


def test_to_feature_matrix_resizes():
    images = [np.full((40, 40), 0.25), np.full((70, 50), 0.75)]
    features = to_feature_matrix(images, 16)
    assert features.shape == (2, 256)
    np.testing.assert_allclose(features[:, 0], [0.25, 0.75], atol=1e-6)
    np.testing.assert_allclose(features.std(axis=1), 0.0, atol=1e-6)
    with pytest.raises(ValueError):
        to_feature_matrix([np.zeros((2, 4, 4))], 8)


def test_auc_by_finding():
    rng = np.random.default_rng(2)
    basis = rng.standard_normal((4, 32 * 32))

    def normals(n):
        return list(_low_rank(rng, n, 32 * 32, 4, basis)[0].reshape(n, 32, 32) * 0.05)

    train = normals(200)
    blobs = [image.copy() for image in normals(20)]
    for image in blobs:
        image[8:20, 8:20] += 1.0  # far off the normal subspace
    same = normals(20)  # indistinguishable from the normal test images
    test = normals(30) + blobs + same
    labels = [0] * 30 + [1] * 40
    kinds = ["normal"] * 30 + ["blob"] * 20 + ["same"] * 20
    result = pca_auc_by_finding(train, test, labels, kinds, n_components=4, size=32)
    assert list(result) == ["overall", "blob", "same"]
    assert result["blob"] == 1.0
    assert 0.25 < result["same"] < 0.75
    assert result["overall"] == pytest.approx((result["blob"] + result["same"]) / 2, abs=1e-9)
    scores = pca_scores(train, test, n_components=4, size=32)  # the per-image scores behind those AUCs
    assert scores.shape == (70,) and scores[30:50].min() > scores[:30].max()


def test_auc_nan_without_normals_and_length_check():
    images = [np.random.default_rng(i).random((8, 8)) for i in range(6)]
    result = pca_auc_by_finding(images[:4], images[4:], [1, 1], ["a", "a"], n_components=2, size=8)
    assert math.isnan(result["overall"]) and math.isnan(result["a"])
    with pytest.raises(ValueError, match="differ"):
        pca_auc_by_finding(images[:4], images[4:], [1], ["a", "a"], size=8)


def test_baseline_loader_scales_as_the_bundle_does(tmp_path):
    """With ``--intensity_percentiles`` the baseline sees what the model sees: two exposures of one image are one
    image after scaling (as in the bundle's preprocessing), and two without."""
    from PIL import Image

    from benchmarks.pca_baseline import scaled_loader

    rng = np.random.default_rng(0)
    image = np.clip(0.5 + 0.2 * rng.standard_normal((48, 48)), 0, 1)
    paths = []
    for name, exposed in (("normal", image), ("darker", 0.1 + 0.6 * image)):
        paths.append(str(tmp_path / f"{name}.png"))
        Image.fromarray(np.round(exposed * 255).astype(np.uint8)).save(paths[-1])
    scaled = [scaled_loader(32, (1, 99))(path) for path in paths]
    assert scaled[0].shape == (32, 32) and scaled[0].min() == 0.0 and scaled[0].max() == 1.0
    assert np.abs(scaled[0] - scaled[1]).max() < 0.03
    loaded = [scaled_loader(32, None)(path) for path in paths]
    assert loaded[0].shape == (48, 48) and np.abs(loaded[0] - loaded[1]).max() > 0.15
