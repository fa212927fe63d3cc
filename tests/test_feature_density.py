"""The encoder-feature statistics: per-cell banks of whitened normal descriptors, nearest distances, the feature and combined scores and map."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scripts.detector import FEATURE_MAP_MAX, AnomalyDetector, FeatureSettingsMismatchError
from scripts.feature_density import FeatureDensity
from scripts.metrics import auc_or_nan
from scripts.networks import SimSIDGenerator

SIZE = 32


def correlated_features(n: int, channels: int, grid: int, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``n x channels x grid x grid`` pooled features, every cell Gaussian with its own mean and covariance; returns
    them with the per-cell means (``L x C``) and covariances (``L x C x C``)."""
    rng = np.random.default_rng(seed)
    cells = grid * grid
    means = rng.normal(0, 3, (cells, channels))
    mixing = rng.normal(0, 1, (cells, channels, channels)) / np.sqrt(channels)
    covs = mixing @ mixing.transpose(0, 2, 1) + 0.1 * np.eye(channels)
    samples = means[:, None] + np.einsum("lcd,lnd->lnc", mixing, rng.normal(0, 1, (cells, n, channels)))
    samples += rng.normal(0, np.sqrt(0.1), samples.shape)
    x = torch.from_numpy(samples).float().permute(1, 2, 0).reshape(n, channels, grid, grid)
    return x, means, covs


def whitened_nearest(train: torch.Tensor, test: torch.Tensor, shrinkage: float) -> np.ndarray:
    """The definition, in float64 numpy: per cell, the metric ``P = (S + shrinkage * tr(S) / C * I)^-1`` of the
    training descriptors' covariance ``S`` and the smallest ``(x - r)^T P (x - r)`` over training descriptors ``r``;
    ``N x C x g x g`` -> ``N x L``."""
    cells_train = train.double().flatten(2).permute(2, 0, 1).numpy()  # L x M x C
    cells_test = test.double().flatten(2).permute(2, 0, 1).numpy()
    channels = cells_train.shape[-1]
    out = []
    for rows, queries in zip(cells_train, cells_test):
        cov = np.cov(rows, rowvar=False)
        precision = np.linalg.inv(cov + shrinkage * np.trace(cov) / channels * np.eye(channels))
        diff = queries[:, None] - rows[None]  # N x M x C
        out.append(np.einsum("nmc,cd,nmd->nm", diff, precision, diff).min(1))
    return np.stack(out, 1)


def map_reference(distance: torch.Tensor, density: FeatureDensity, sigma: float, size: int) -> torch.Tensor:
    """The feature map by its definition: per image the square roots of the ``N x g x g`` cell distances; per cell
    the larger of those over ``sqrt(cell_scale)`` and of them convolved along rows then columns with the Gaussian
    integrated over each cell (truncated at 4 sigma, normalised), edge cells repeated, over ``sqrt(smooth_scale)``;
    clipped at ``FEATURE_MAP_MAX``, bilinearly upsampled to ``size``."""
    cells = np.sqrt(distance.double().clamp_min(0).numpy())
    radius = int(max(sigma * 4.0, 0.5) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.array([math.erf((k + 0.5) / (sigma * math.sqrt(2))) - math.erf((k - 0.5) / (sigma * math.sqrt(2)))
                       for k in offsets]) if sigma > 0 else np.ones(1)
    kernel /= kernel.sum()
    padded = np.pad(cells, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    grid = cells.shape[-1]
    rows = sum(w * padded[:, :, radius + k: radius + k + grid] for k, w in zip(offsets, kernel))
    smooth = sum(w * rows[:, radius + k: radius + k + grid] for k, w in zip(offsets, kernel))
    both = np.maximum(cells / math.sqrt(float(density.cell_scale)), smooth / math.sqrt(float(density.smooth_scale)))
    return F.interpolate(torch.from_numpy(np.minimum(both, FEATURE_MAP_MAX)).float()[:, None], size=(size, size),
                         mode="bilinear", align_corners=False)


def test_fit_and_distance_follow_the_definition() -> None:
    channels, grid, shrinkage = 6, 3, 0.05
    samples, _, _ = correlated_features(405, channels, grid, seed=0)
    train, test = samples[:200], samples[400:]
    augmented = samples[200:400]  # stands in for the copies: they join the bank and the covariance
    density = FeatureDensity(channels, feature_size=grid * 4, grid=grid, shrinkage=shrinkage)
    density.fit(train, augmented)
    assert density.bank.shape == (grid * grid, 400, channels)
    got = density.distance(test).numpy().reshape(5, -1)
    want = whitened_nearest(samples[:400], test, shrinkage)
    np.testing.assert_allclose(got, want, rtol=5e-3, atol=5e-3 * want.max())
    standardised = (got - density.distance_mean.numpy()) / density.distance_scale.numpy()
    assert density.image_score(density.distance(test)).tolist() == pytest.approx(standardised.max(1), rel=1e-5)
    # whitening: W W^T is the shrunk precision, and the bank is the training descriptors centred and whitened
    cells = samples[:400].double().flatten(2).permute(2, 0, 1)
    torch.testing.assert_close(density.mean, cells.mean(1).float())
    whitened = torch.bmm(cells.float() - density.mean[:, None], density.whitening)
    torch.testing.assert_close(density.bank.float(), whitened, rtol=2e-3, atol=2e-3 * float(whitened.abs().max()))
    with pytest.raises(ValueError, match="whole copies of the 200 images"):
        density.fit(train, augmented[:150])


def test_whitening_of_long_descriptors_on_two_threads() -> None:
    """Descriptors longer than 128 values (e.g. ``feature_subcells`` 3, or a deeper ``feature_depth``) on two threads,
    as on a 2-core machine: the whitening is still ``W W^T = (S + shrinkage * mean(diag(S)) * I)^-1`` in every cell
    (torch's batched float64 matrix inverse fails there, or returns wrong values)."""
    channels, grid, shrinkage = 160, 2, 0.3
    samples, _, _ = correlated_features(404, channels, grid, seed=7)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        density = FeatureDensity(channels, feature_size=grid, grid=grid, shrinkage=shrinkage)
        density.fit(samples[:400])
    finally:
        torch.set_num_threads(threads)
    cells = samples[:400].double().flatten(2).permute(2, 0, 1).numpy()  # L x M x C
    for cell, rows in enumerate(cells):
        cov = np.cov(rows, rowvar=False)
        shrunk = cov + shrinkage * np.trace(cov) / channels * np.eye(channels)
        whitening = density.whitening[cell].double().numpy()
        np.testing.assert_allclose(whitening @ whitening.T @ shrunk, np.eye(channels), atol=1e-4)
    want = whitened_nearest(samples[:400], samples[400:], shrinkage)
    got = density.distance(samples[400:]).numpy().reshape(4, -1)
    np.testing.assert_allclose(got, want, rtol=5e-3, atol=5e-3 * want.max())


def test_unfitted_distance_is_the_squared_norm() -> None:
    density = FeatureDensity(3, feature_size=4, grid=2)
    pooled = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(density.distance(pooled), pooled.square().sum(1))


def test_score_statistics_are_those_of_images_the_bank_does_not_hold() -> None:
    """An image's distance to a bank that holds it (or an augmented copy of it) is about 0; the kept score mean and
    std and the cell scale are measured leaving each image and its copies out, so they describe new normal images."""
    channels, grid = 4, 2
    samples, _, _ = correlated_features(1300, channels, grid, seed=3)
    train, fresh = samples[:300], samples[300:]
    density = FeatureDensity(channels, feature_size=grid, grid=grid, shrinkage=0.3)
    density.fit(train, train + 1e-4 * torch.randn_like(train))  # copies all but identical to their images
    assert float(density.distance(train).max()) < 1e-3  # in sample: the image itself
    fresh_distance = density.distance(fresh)
    fresh_scores = density.image_score(fresh_distance)
    assert float(density.score_mean) == pytest.approx(float(fresh_scores.mean()), rel=0.15)
    assert float(density.score_std) == pytest.approx(float(fresh_scores.std()), rel=0.35)
    share_above = float((fresh_distance > density.cell_scale).float().mean())
    assert 0.003 < share_above < 0.03  # cell_scale: the 99th percentile of a normal cell's distance


def test_each_cell_is_standardised_by_the_distances_of_left_out_normal_images() -> None:
    """``distance_mean`` and ``distance_scale`` are, per cell, the mean of the left-out distances of the training
    images (each against the bank without its own rows, the whitening measured on all) and
    ``sqrt(var_c + mean over cells of var)`` of them (the spread shrunk towards the cells' common one)."""
    channels, grid, shrinkage = 3, 2, 0.3
    samples, _, _ = correlated_features(60, channels, grid, seed=11)
    density = FeatureDensity(channels, feature_size=grid, grid=grid, shrinkage=shrinkage)
    density.fit(samples)
    cells = samples.double().flatten(2).permute(2, 0, 1).numpy()  # L x N x C
    held_out = []
    for rows in cells:
        cov = np.cov(rows, rowvar=False)
        precision = np.linalg.inv(cov + shrinkage * np.trace(cov) / channels * np.eye(channels))
        diff = rows[:, None] - rows[None]
        d = np.einsum("nmc,cd,nmd->nm", diff, precision, diff)
        np.fill_diagonal(d, np.inf)
        held_out.append(d.min(1))
    held_out = np.stack(held_out)  # L x N
    variance = held_out.var(1, ddof=1)
    np.testing.assert_allclose(density.distance_mean.numpy(), held_out.mean(1), rtol=5e-3)
    np.testing.assert_allclose(density.distance_scale.numpy(), np.sqrt(variance + variance.mean()), rtol=5e-3)
    scores = ((held_out.T - held_out.mean(1)) / np.sqrt(variance + variance.mean())).max(1)
    assert float(density.score_mean) == pytest.approx(scores.mean(), rel=5e-3, abs=5e-3 * np.abs(scores).max())
    assert float(density.score_std) == pytest.approx(scores.std(ddof=1), rel=5e-3)


def test_a_cell_where_normal_images_vary_much_does_not_hide_a_finding_in_a_quiet_one() -> None:
    """One cell's normal descriptors are heavy-tailed (a few normal images lie far from the rest there, as the body
    outline or collimation of real radiographs do); a finding moves another, quiet cell. The largest raw distance
    ranks the normal images with a far outlying cell above the findings; standardised per cell, they rank below."""
    channels, grid = 4, 4
    rng = torch.Generator().manual_seed(0)
    def normal(n: int) -> torch.Tensor:
        x = torch.randn(n, channels, grid, grid, generator=rng)
        scale = torch.where(torch.rand(n, generator=rng) < 0.15, 6.0, 1.0)  # 15 % of images far out in cell 0
        x[:, :, 0, 0] *= scale[:, None]
        return x
    density = FeatureDensity(channels, feature_size=grid, grid=grid, shrinkage=0.3)
    density.fit(normal(400))
    fresh, abnormal = normal(200), normal(200)
    abnormal[:, :, 3, 3] += 3.0  # a finding in a quiet cell
    labels = np.r_[np.zeros(200), np.ones(200)]
    distance = density.distance(torch.cat([fresh, abnormal]))
    raw_auc = auc_or_nan(distance.flatten(1).amax(1).numpy(), labels)
    auc = auc_or_nan(density.image_score(distance).numpy(), labels)
    assert raw_auc < 0.97 < auc and auc > raw_auc + 0.02  # raw: 0.950, standardised: 0.988
    assert float(density.distance_scale[0]) > 2 * float(density.distance_scale[1:].max())


def test_the_map_keeps_normal_cells_below_1_and_follows_its_definition() -> None:
    """The map is per cell the larger of the unsmoothed and the smoothed square-root distances, each over the
    square of its 99th percentile on left-out normal images: a new normal image's cells exceed 1 about 1-2 % of
    the time, a single far cell keeps its sharp peak and lends some of it to its neighbours."""
    channels, grid, sigma = 4, 6, 0.75
    samples, _, _ = correlated_features(1300, channels, grid, seed=5)
    train, fresh = samples[:300], samples[300:]
    density = FeatureDensity(channels, feature_size=grid, grid=grid, shrinkage=0.3, map_sigma=sigma)
    density.fit(train)
    assert float(density.map_sigma) == sigma
    assert float(density.smooth_scale) < 0.8 * float(density.cell_scale)  # smoothing evens out the largest cells
    fresh_distance = density.distance(fresh)
    assert 0.003 < float((fresh_distance > density.cell_scale).float().mean()) < 0.03
    assert 0.005 < float((density.map(fresh_distance, (grid, grid)) > 1).float().mean()) < 0.04
    want = map_reference(fresh_distance[:20], density, sigma, 4 * grid)
    got = density.map(fresh_distance[:20], (4 * grid, 4 * grid))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # a uniform distance stays uniform (the kernel is normalised, edge cells repeated); one far cell keeps its
    # unsmoothed peak and spreads symmetrically over its neighbours, most to the nearest
    uniform = density.map(torch.full((1, grid, grid), 4.0), (grid, grid))
    torch.testing.assert_close(uniform, torch.full_like(uniform, 2.0 / math.sqrt(float(density.smooth_scale))))
    spike = torch.zeros(1, grid, grid)
    spike[0, 2, 3] = 4.0
    spread = density.map(spike, (grid, grid))[0, 0]
    assert float(spread[2, 3]) == pytest.approx(2.0 / math.sqrt(float(density.cell_scale)), rel=1e-5)
    assert spread[2, 3] > spread[2, 2] > spread[2, 1] > spread[2, 0] > 0
    torch.testing.assert_close(spread[2, 2], spread[2, 4])
    torch.testing.assert_close(spread[1, 3], spread[2, 2])
    # without smoothing the two are one: the square roots over sqrt(cell_scale)
    unsmoothed = FeatureDensity(channels, feature_size=grid, grid=grid, shrinkage=0.3)
    unsmoothed.fit(train)
    assert float(unsmoothed.smooth_scale) == float(unsmoothed.cell_scale)
    torch.testing.assert_close(unsmoothed.map(fresh_distance, (grid, grid))[:, 0],
                               (fresh_distance / unsmoothed.cell_scale).sqrt())


def test_normal_anatomy_in_two_forms_is_near_one_and_what_lies_between_is_not() -> None:
    """Normal cells come in two forms (as a small and a large patient put an edge in two places): both are near the
    bank, a shifted cell stands out at its place, and so does a cell halfway between the two forms, which a
    Gaussian around the mean would call the most normal of all."""
    channels, grid = 4, 3
    g = torch.Generator().manual_seed(0)
    form = torch.tensor([3.0, -3.0, 0.0, 0.0])
    sign = torch.where(torch.rand(900, 1, 1, 1, generator=g) < 0.5, 1.0, -1.0)
    samples = sign * form[None, :, None, None] + 0.3 * torch.randn(900, channels, grid, grid, generator=g)
    density = FeatureDensity(channels, feature_size=grid, grid=grid, shrinkage=0.3)
    density.fit(samples[:800])
    normal = density.distance(samples[800:])
    halfway = samples[800:810].clone()
    halfway[:, :, 1, 2] = 0.3 * torch.randn(10, channels, generator=g)  # the mean of the two forms
    shifted = samples[800:810].clone()
    shifted[:, 2, 0, 1] += 3.0
    for abnormal, cell in ((halfway, 1 * grid + 2), (shifted, 0 * grid + 1)):
        distance = density.distance(abnormal)
        assert (distance.flatten(1).argmax(1) == cell).all()
        assert float(distance.flatten(1)[:, cell].min()) > 3 * float(normal.max())


def test_pool_averages_equal_cells_and_the_grid_must_divide_the_feature() -> None:
    density = FeatureDensity(3, feature_size=12, grid=4)
    features = torch.randn(2, 3, 12, 12)
    pooled = density.pool(features)
    assert pooled.shape == (2, 3, 4, 4)
    torch.testing.assert_close(pooled[:, :, 1, 2], features[:, :, 3:6, 6:9].mean((-2, -1)))
    with pytest.raises(ValueError, match="feature_grid times feature_subcells that divides 12"):
        FeatureDensity(3, feature_size=12, grid=5)
    with pytest.raises(ValueError, match="feature_grid times feature_subcells that divides 12"):
        FeatureDensity(3, feature_size=12, grid=4, subcells=2)
    with pytest.raises(ValueError, match="feature_subcells must be >= 1"):
        FeatureDensity(3, feature_size=12, grid=4, subcells=0)
    with pytest.raises(ValueError, match="at least 3"):
        density.fit(pooled[:2])


def test_subcell_descriptor_keeps_each_part_of_a_cell_in_its_own_entries() -> None:
    density = FeatureDensity(3, feature_size=12, grid=3, subcells=2)
    assert density.channels == 12 and density.mean.shape == (9, 12) and density.whitening.shape == (9, 12, 12)
    features = torch.randn(2, 3, 12, 12)
    pooled = density.pool(features)
    assert pooled.shape == (2, 12, 3, 3)
    for channel, i, j in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (2, 1, 1)]:
        rows, cols = slice(4 + 2 * i, 6 + 2 * i), slice(8 + 2 * j, 10 + 2 * j)  # part (i, j) of cell (1, 2)
        torch.testing.assert_close(pooled[:, (channel * 2 + i) * 2 + j, 1, 2], features[:, channel, rows, cols].mean((-2, -1)))


def test_subcells_see_a_finding_that_moves_within_a_cell_without_changing_its_mean() -> None:
    """Normal cells are bright on the left half and dark on the right; the finding mirrors one cell. The cell mean
    does not change, so a descriptor of the cell mean misses it; with 2 x 2 parts per cell it is far from normal."""
    g = torch.Generator().manual_seed(0)
    left_bright = torch.cat([torch.ones(2, 8, 4), -torch.ones(2, 8, 4)], dim=-1).repeat(1, 2, 2)  # 2 x 16 x 16
    normal = left_bright + 0.1 * torch.randn(300, 2, 16, 16, generator=g)
    abnormal = normal[:20].clone()
    abnormal[:, :, 8:16, 0:8] = abnormal[:, :, 8:16, 0:8].flip(-1)  # cell (1, 0) mirrored
    for subcells, found in ((1, False), (2, True)):
        density = FeatureDensity(2, feature_size=16, grid=2, shrinkage=0.01, subcells=subcells)
        density.fit(density.pool(normal[20:]))
        d_normal = density.distance(density.pool(normal[:20]))[:, 1, 0]
        d_abnormal = density.distance(density.pool(abnormal))[:, 1, 0]
        assert bool(d_abnormal.min() > 100 * d_normal.max()) is found
        if not found:
            torch.testing.assert_close(d_abnormal, d_normal, rtol=0.5, atol=0.5 * float(d_normal.max()))


def test_mirror_descriptor_adds_each_part_minus_the_part_mirrored_left_right() -> None:
    density = FeatureDensity(3, feature_size=12, grid=3, subcells=2, mirror=True)
    assert density.channels == 24 and density.mean.shape == (9, 24)
    features = torch.randn(2, 3, 12, 12)
    pooled = density.pool(features)
    plain = FeatureDensity(3, feature_size=12, grid=3, subcells=2).pool(features)
    torch.testing.assert_close(pooled[:, :12], plain)
    for channel, i, j in [(0, 0, 0), (1, 0, 1), (2, 1, 0)]:
        part = features[:, channel, 4 + 2 * i:6 + 2 * i, 8 + 2 * j:10 + 2 * j].mean((-2, -1))  # part (i, j), cell (1, 2)
        mirrored = features[:, channel, 4 + 2 * i:6 + 2 * i, 2 - 2 * j:4 - 2 * j].mean((-2, -1))  # columns 11-c
        torch.testing.assert_close(pooled[:, 12 + (channel * 2 + i) * 2 + j, 1, 2], part - mirrored)
    symmetric = torch.cat([features[..., :6], features[..., :6].flip(-1)], -1)
    assert float(density.pool(symmetric)[:, 12:].abs().max()) < 1e-6


def test_mirror_descriptor_finds_a_one_sided_change_hidden_in_the_spread_between_patients() -> None:
    """Every normal image has its own brightness (spread 3) shared by both sides; the finding raises one cell by 1,
    which stays inside the spread of that cell over normal images, so the nearest normal is close without the mirror;
    against the other side of the same image it stands out."""
    g = torch.Generator().manual_seed(0)
    def images(n: int) -> torch.Tensor:
        return 3 * torch.randn(n, 2, 1, 1, generator=g) + 0.05 * torch.randn(n, 2, 8, 8, generator=g)
    train, normal, abnormal = images(200), images(30), images(30)
    abnormal[:, :, 2:4, 0:2] += 1.0  # cell (1, 0); its mirror is cell (1, 3)
    for mirror, low, high in ((False, 0.0, 0.8), (True, 0.99, 1.0)):
        density = FeatureDensity(2, feature_size=8, grid=4, mirror=mirror)
        density.fit(density.pool(train))
        scores = density.image_score(density.distance(density.pool(torch.cat([normal, abnormal]))))
        ranks = scores.argsort().argsort().double().numpy()
        auc = (ranks[30:].sum() - 30 * 29 / 2) / (30 * 30)
        assert low <= auc <= high, (mirror, auc)
    cells = density.distance(density.pool(abnormal))[:, 1]  # row 1: the finding at column 0, its mirror at 3
    assert bool((cells[:, 0] > 0.5 * cells[:, 3]).all()) and float(cells[:, 1:3].max()) < float(cells[:, 0].min())


def test_centred_descriptor_is_each_part_less_the_image_mean_and_ignores_what_the_whole_image_shares() -> None:
    density = FeatureDensity(3, feature_size=12, grid=3, subcells=2, centre=True)
    assert density.channels == 12 and bool(density.centred)
    features = torch.randn(2, 3, 12, 12)
    plain = FeatureDensity(3, feature_size=12, grid=3, subcells=2).pool(features)
    image_mean = features.mean((2, 3))  # N x C
    for channel, i, j in [(0, 0, 0), (1, 0, 1), (2, 1, 1)]:
        entry = (channel * 2 + i) * 2 + j
        torch.testing.assert_close(density.pool(features)[:, entry, 2, 0], plain[:, entry, 2, 0] - image_mean[:, channel])
    shifted = features + torch.randn(2, 3, 1, 1) * 5  # every place of an image moved alike, per channel
    scale = float(features.abs().max())
    torch.testing.assert_close(density.pool(shifted), density.pool(features), atol=1e-5 * scale * 5, rtol=0)
    # the command line hands flags as strings: "false" must mean false
    assert not FeatureDensity(3, 12, 3, centre="false", mirror="false").centre
    assert not FeatureDensity(3, 12, 3, mirror="false").mirror and FeatureDensity(3, 12, 3, mirror="true").mirror
    with pytest.raises(ValueError, match="feature_centre"):
        FeatureDensity(3, 12, 3, centre="ture")


def test_centred_descriptor_finds_a_local_change_hidden_in_each_patients_overall_level() -> None:
    """Every image has its own overall level (spread 3, e.g. exposure) shared by all its cells; the finding raises
    one cell by 1, inside that cell's spread over normal images, so the nearest normal is close without centring;
    less the image's own mean it stands out."""
    g = torch.Generator().manual_seed(0)
    def images(n: int) -> torch.Tensor:
        return 3 * torch.randn(n, 2, 1, 1, generator=g) + 0.05 * torch.randn(n, 2, 8, 8, generator=g)
    train, normal, abnormal = images(200), images(30), images(30)
    abnormal[:, :, 2:4, 4:6] += 1.0  # cell (1, 2)
    for centre, low, high in ((False, 0.0, 0.8), (True, 0.99, 1.0)):
        density = FeatureDensity(2, feature_size=8, grid=4, centre=centre)
        density.fit(density.pool(train))
        scores = density.image_score(density.distance(density.pool(torch.cat([normal, abnormal]))))
        ranks = scores.argsort().argsort().double().numpy()
        auc = (ranks[30:].sum() - 30 * 29 / 2) / (30 * 30)
        assert low <= auc <= high, (centre, auc)
    cells = density.distance(density.pool(abnormal)).flatten(1)
    assert bool((cells.argmax(1) == 1 * 4 + 2).all())  # the finding's cell is the largest in every image


class CopyGenerator(nn.Module):
    """A generator that reproduces its input exactly (as the SimSID generator reproduces a large finding through its
    skips); its "encoder feature" at depth 0 is the image itself."""

    features = [1, 2]

    def forward(self, x: torch.Tensor, feature_depth: int | None = None) -> dict[str, torch.Tensor]:
        out = {"recon": x.clone()}
        if feature_depth is not None:
            out["features"] = x
        return out

    def encoder_feature(self, x: torch.Tensor, feature_depth: int) -> torch.Tensor:
        self.encoder_calls += 1
        return x

    encoder_calls = 0


def textured(n: int, seed: int, lesion: bool = False) -> torch.Tensor:
    """Smooth random images in [0, 1]; with ``lesion`` a bright 8 x 8 block at rows 16-23, columns 8-15."""
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 0.1 * F.avg_pool2d(torch.randn(n, 1, SIZE, SIZE, generator=g), 5, stride=1, padding=2)
    if lesion:
        x[:, :, 16:24, 8:16] += 0.2
    return x


def copy_detector(**kwargs) -> AnomalyDetector:
    torch.manual_seed(0)
    discriminator = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 1))
    return AnomalyDetector(CopyGenerator(), discriminator, img_size=SIZE, feature_depth=0, feature_grid=4,
                           **kwargs).eval()


def test_a_copied_finding_is_invisible_to_the_residual_but_found_by_the_feature_score_and_map() -> None:
    detector = copy_detector(score_kind="combined", map_kind="feature", feature_subcells=4)  # 16 values per cell
    with torch.no_grad():
        detector.update_statistics(detector.raw_scores(textured(200, seed=0)))
        normal, abnormal = detector.raw_scores(textured(20, seed=1)), detector.raw_scores(textured(20, 2, True))
        scores_n, scores_a = detector.normalise(normal), detector.normalise(abnormal)
    assert bool(detector.statistics.ready)
    # the residual is zero for every image: the reconstruction score cannot tell them apart
    torch.testing.assert_close(scores_a["reconstruction"], scores_n["reconstruction"])
    assert scores_a["feature"].min() > scores_n["feature"].max()
    assert abnormal["feature_score"].min() > 20 * normal["feature_score"].max()
    # combined = sigmoid(z_reconstruction + z_feature)
    density = detector.statistics.density
    z_feature = (abnormal["feature_score"] - density.score_mean) / density.score_std
    z_recon = (abnormal["recon_error"] - detector.statistics.mean[1]) / detector.statistics.std[1]
    torch.testing.assert_close(scores_a["feature"], torch.sigmoid(z_feature))
    torch.testing.assert_close(scores_a["combined"], torch.sigmoid(z_recon + z_feature))
    # the map: the larger of the square-root cell distances and those smoothed over 0.75 cells, each over its
    # normal scale, clipped, upsampled to the image, highest on the lesion's cell (rows 16-23, columns 8-15)
    amap = abnormal["anomaly_map"]
    with torch.no_grad():
        cell_distance = density.distance(density.pool(textured(20, 2, True)))  # feature = image, 4 x 4 cells
    assert float(density.map_sigma) == 0.75
    want = map_reference(cell_distance, density, 0.75, SIZE)
    torch.testing.assert_close(amap, want, rtol=1e-4, atol=1e-4 * float(want.max()))
    cells = F.avg_pool2d(amap, 8)[:, 0]
    assert (cells.flatten(1).argmax(1) == 2 * 4 + 1).all()
    assert normal["anomaly_map"].max() < amap[:, :, 17:23, 9:15].min()
    # the forward pass (what inference and the export run) returns that map and the chosen score
    with torch.no_grad():
        out_map, out_score = detector(textured(20, 2, True))
    torch.testing.assert_close(out_map, amap)
    torch.testing.assert_close(out_score, scores_a["combined"])
    # the map is clipped at FEATURE_MAP_MAX: a gross departure saturates it, the score still ranks it
    gross = textured(2, seed=2)
    gross[:, :, 16:24, 8:16] += 50.0
    with torch.no_grad():
        gross_map, gross_score = detector(gross)
        gross_cells = (density.distance(density.pool(gross)) / density.cell_scale).sqrt()
    assert float(gross_cells.max()) > 10 * FEATURE_MAP_MAX and float(gross_map.max()) <= FEATURE_MAP_MAX
    assert gross_score.min() >= scores_a["combined"].max()


def test_the_residual_map_and_the_papers_scores_need_no_feature_statistics() -> None:
    detector = copy_detector(score_kind="reconstruction", map_kind="residual")
    x = textured(4, seed=3)
    with torch.no_grad():
        raw = detector.raw_scores(x)
    torch.testing.assert_close(raw["anomaly_map"], torch.zeros_like(x))
    plain = AnomalyDetector(CopyGenerator(), nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 1)), img_size=SIZE)
    assert plain.statistics.density is None and set(plain.normalise(plain.raw_scores(x))) == {"discriminator",
                                                                                              "reconstruction"}
    with pytest.raises(ValueError, match="set feature_depth"):
        AnomalyDetector(CopyGenerator(), nn.Identity(), img_size=SIZE, score_kind="combined")
    with pytest.raises(ValueError, match="not an encoder depth"):
        AnomalyDetector(CopyGenerator(), nn.Identity(), img_size=SIZE, feature_depth=2)


def test_centred_detector_traces_with_the_image_mean_computed_from_each_input() -> None:
    """The export traces the detector on one example; the centring mean must be an operation on the input, not a
    constant of the example: the traced detector scores other images (and batch sizes) as the eager one does."""
    detector = copy_detector(score_kind="feature", map_kind="feature", feature_centre=True)
    with torch.no_grad():
        detector.update_statistics(detector.raw_scores(textured(50, seed=0)))
        traced = torch.jit.trace(detector, textured(1, seed=7))
        x = torch.cat([textured(2, seed=8) + 0.3, textured(2, seed=9, lesion=True)])  # normals, brighter overall
        for got, want in zip(traced(x), detector(x)):
            torch.testing.assert_close(got, want, atol=1e-5 * float(want.abs().max()), rtol=1e-5)
        scores = detector(x)[1]
        assert float(scores[2:].min()) > float(scores[:2].max())  # the lesions above the brighter normals


def test_state_dict_round_trip_and_models_saved_before_the_feature_statistics(caplog) -> None:
    source = copy_detector(score_kind="combined", map_kind="feature")
    with torch.no_grad():
        source.update_statistics(source.raw_scores(textured(50, seed=0)))
    target = copy_detector(score_kind="combined", map_kind="feature")
    target.load_state_dict(source.state_dict())
    x = textured(6, seed=4, lesion=True)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
    assert bool(target.statistics.ready)
    # the bank is saved in float16 (it holds float16 values) and used in float32; its norms are derived, not saved
    saved = source.state_dict()
    assert saved["statistics.density.bank"].dtype == torch.float16 and "statistics.density.bank_norms" not in saved
    assert target.statistics.density.bank.dtype == torch.float32 and target.statistics.density.bank.shape[1] == 50
    torch.testing.assert_close(target.statistics.density.bank_norms, target.statistics.density.bank.square().sum(-1))
    # the map keeps the smoothing its cell_scale was measured with, whatever the loading detector was built with,
    # until the statistics are measured again; a bank of bundle 0.5 (no smoothing saved) was measured without
    unsmoothed = copy_detector(score_kind="combined", map_kind="feature", feature_map_sigma=0.0)
    unsmoothed.load_state_dict(source.state_dict())
    assert float(unsmoothed.statistics.density.map_sigma) == 0.75
    with torch.no_grad():
        torch.testing.assert_close(unsmoothed(x), source(x))
        unsmoothed.update_statistics(unsmoothed.raw_scores(textured(50, seed=0)))
    assert float(unsmoothed.statistics.density.map_sigma) == 0.0
    bundle_05 = {k: v for k, v in unsmoothed.state_dict().items()
                 if k not in ("statistics.density.map_sigma", "statistics.density.smooth_scale")}
    loaded_05 = copy_detector(score_kind="combined", map_kind="feature")
    loaded_05.load_state_dict(bundle_05)
    assert float(loaded_05.statistics.density.map_sigma) == 0.0 and bool(loaded_05.statistics.ready)
    with torch.no_grad():
        torch.testing.assert_close(loaded_05(x), unsmoothed(x))
    # a bank of bundle 0.8 (no per-cell standardisation saved) keeps scoring the largest cell distance, which its
    # score statistics were measured with; measured again, it is standardised per cell
    standardisation = ("statistics.density.distance_mean", "statistics.density.distance_scale")
    bundle_08 = {k: v for k, v in source.state_dict().items() if k not in standardisation}
    loaded_08 = copy_detector(score_kind="combined", map_kind="feature")
    loaded_08.load_state_dict(bundle_08)
    density = loaded_08.statistics.density
    assert bool(loaded_08.statistics.ready)
    assert not density.distance_mean.any() and bool((density.distance_scale == 1).all())
    assert float(source.statistics.density.distance_mean.min()) > 0
    with torch.no_grad():
        raw = loaded_08.raw_scores(x)
        distance = density.distance(raw["pooled_features"])
        torch.testing.assert_close(raw["feature_score"], distance.flatten(1).amax(1))
    old = {k: v for k, v in source.state_dict().items() if ".density." not in k}
    fresh = copy_detector(score_kind="combined", map_kind="feature")
    with caplog.at_level(logging.WARNING, logger="scripts.detector"):
        fresh.load_state_dict(old)
    assert not bool(fresh.statistics.ready)  # measured again before scoring (evaluation) or refused (inference)
    assert "no encoder-feature statistics" in caplog.text
    torch.testing.assert_close(fresh.statistics.pixel_mean, source.statistics.pixel_mean)
    # a model of a bundle before 0.5 kept per-cell Gaussians (a mean and a precision, of any settings): its generator
    # loads, its feature statistics are dropped and measured again
    gaussians = {**old, "statistics.density.mean": torch.zeros(4, 9), "statistics.density.precision": torch.eye(9)
                 .repeat(4, 1, 1), "statistics.density.score_mean": torch.tensor(3.0),
                 "statistics.density.score_std": torch.tensor(1.0)}
    older = copy_detector(score_kind="combined", map_kind="feature")
    older.load_state_dict(gaussians)
    assert not bool(older.statistics.ready) and older.statistics.density.bank.shape == (16, 1, 1)
    torch.testing.assert_close(older.statistics.density.mean, torch.zeros(16, 1))


def test_weights_measured_with_other_feature_settings_are_refused_with_the_settings_to_pass(tmp_path) -> None:
    """A model whose feature statistics were measured with one mean per cell, loaded by a detector built with
    subcells, says what to pass instead of torch's size-mismatch list, and the configs' checkpoint loader names the
    file; with those settings it loads and scores as before."""
    from ignite.engine import Engine

    from scripts.checkpoint import CheckpointFileLoader, save_atomic

    source = copy_detector(score_kind="feature", map_kind="feature", feature_subcells=1)
    with torch.no_grad():
        source.update_statistics(source.raw_scores(textured(50, seed=0)))
    with pytest.raises(FeatureSettingsMismatchError, match="16 cells by 1 values .* 16 cells by 4 .*"
                       "'--feature_depth 0 --feature_grid 4 --feature_subcells 1 --feature_mirror false'"):
        copy_detector(score_kind="feature", map_kind="feature", feature_subcells=2).load_state_dict(source.state_dict())
    with pytest.raises(FeatureSettingsMismatchError, match="16 cells by 1 values .* 16 cells by 2 .*feature_mirror "
                       "true.*'--feature_depth 0 --feature_grid 4 --feature_subcells 1 --feature_mirror false'"):
        copy_detector(feature_subcells=1, feature_mirror=True).load_state_dict(source.state_dict())
    mirrored = copy_detector(feature_subcells=1, feature_mirror=True)
    with pytest.raises(FeatureSettingsMismatchError, match="'--feature_depth 0 --feature_grid 4 --feature_subcells 1 "
                       "--feature_mirror true'"):
        source.load_state_dict(mirrored.state_dict())
    # centring does not change the shapes: the saved flag says how the bank was measured (none saved: not centred)
    with pytest.raises(FeatureSettingsMismatchError, match="feature_centre false .* feature_centre true: pass "
                       "'--feature_centre false'"):
        copy_detector(feature_subcells=1, feature_centre=True).load_state_dict(source.state_dict())
    without_flag = {k: v for k, v in source.state_dict().items() if k != "statistics.density.centred"}
    with pytest.raises(FeatureSettingsMismatchError, match="'--feature_centre false'"):
        copy_detector(feature_subcells=1, feature_centre=True).load_state_dict(without_flag)
    copy_detector(feature_subcells=1).load_state_dict(without_flag)
    centred = copy_detector(feature_subcells=1, feature_centre=True)
    with torch.no_grad():
        centred.update_statistics(centred.raw_scores(textured(50, seed=0)))
    with pytest.raises(FeatureSettingsMismatchError, match="'--feature_centre true'"):
        source.load_state_dict(centred.state_dict())
    path = tmp_path / "model.pt"
    save_atomic(centred.state_dict(), path)
    from scripts.checkpoint import trained_settings

    assert trained_settings(path, 64, None)["feature_centre"] is True  # inference builds what the model was measured with
    save_atomic(source.state_dict(), path)
    assert trained_settings(path, 64, None)["feature_centre"] is False
    save_atomic(without_flag, path)
    assert trained_settings(path, 64, None, feature_centre=True)["feature_centre"] is False
    save_atomic(source.state_dict(), path)
    loader = CheckpointFileLoader(load_path=path, load_dict={"model": copy_detector(feature_subcells=2)})
    with pytest.raises(ValueError, match=r"model\.pt does not fit .*'--feature_depth 0 --feature_grid 4 "
                       "--feature_subcells 1 --feature_mirror false'"):
        loader(Engine(lambda engine, batch: None))
    target = copy_detector(score_kind="feature", map_kind="feature", feature_subcells=1)
    target.load_state_dict(source.state_dict())
    x = textured(4, seed=5, lesion=True)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_generator_returns_the_encoder_feature_it_is_asked_for() -> None:
    torch.manual_seed(0)
    generator = SimSIDGenerator(img_size=32, num_patch=2, level=2, features_root=4, num_slots=8, mem_num_slots=8,
                                inpaint_channels=8, num_heads=2, se_reduction=4, ops=("concat", "none"),
                                decoder_memory=("memory", "none"), initial_combine=1).eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        plain = generator(x)
        out = generator(x, feature_depth=1)
        patches = torch.cat([x[:, :, :16, :16], x[:, :, :16, 16:], x[:, :, 16:, :16], x[:, :, 16:, 16:]])
        patches = patches.reshape(4, 3, 1, 16, 16).transpose(0, 1).reshape(12, 1, 16, 16)  # B*P, row-major patches
        depth1 = generator.downs[0](generator.stem(patches)).reshape(3, 2, 2, 8, 8, 8)
        want = depth1.permute(0, 3, 1, 4, 2, 5).reshape(3, 8, 16, 16)
    assert set(plain) == {"recon"} and generator.features == [4, 8, 16]
    torch.testing.assert_close(out["recon"], plain["recon"])
    torch.testing.assert_close(out["features"], want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    with torch.no_grad():  # the encoder blocks alone give the same feature
        torch.testing.assert_close(generator.encoder_feature(x, 1), out["features"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="feature_depth"):
        generator(x, feature_depth=3)


def test_statistics_measure_the_features_on_more_images_than_the_scores() -> None:
    """compute_score_statistics: residual and discriminator statistics over the first ``max_images``, the feature
    statistics over the first ``feature_max_images`` (those past ``max_images`` by the encoder alone)."""
    from monai.data import DataLoader

    from scripts.handlers import compute_score_statistics

    images = torch.cat([textured(10, seed=6), textured(4, seed=7, lesion=True)])  # the last 4 past both caps
    loader = DataLoader([{"image": im} for im in images], batch_size=3)
    detector = copy_detector(score_kind="combined", map_kind="feature")
    compute_score_statistics(detector, loader, "cpu", max_images=4, feature_max_images=10)
    want = copy_detector(score_kind="combined", map_kind="feature")
    with torch.no_grad():
        want.update_statistics({**want.raw_scores(images[:4]), "pooled_features": want.pooled_features(images[:10])})
    for name, value in want.statistics.state_dict().items():
        torch.testing.assert_close(detector.statistics.state_dict()[name], value, msg=name)
    assert detector.generator.encoder_calls >= 2  # images 5-10 went through the encoder alone
    other = copy_detector(score_kind="combined", map_kind="feature")
    compute_score_statistics(other, loader, "cpu", max_images=4, feature_max_images=14)  # all 14 now
    with torch.no_grad():
        all_cells = want.pooled_features(images).flatten(2).mean(0).T  # L x C: the mean over the 14 images
    torch.testing.assert_close(other.statistics.density.mean, all_cells)
    assert not torch.allclose(detector.statistics.density.mean, all_cells, atol=1e-3)


def test_augmented_copies_join_the_bank_each_a_copy_of_its_image_and_the_same_at_every_measurement() -> None:
    """compute_score_statistics with an augmentation: every feature-statistics image gives ``augmented_copies``
    copies, drawn from the augmentation reset to ``seed`` (so two measurements of the same weights agree), row ``j``
    of the copies being image ``j % N`` augmented; without features or copies nothing is augmented."""
    from monai.data import DataLoader
    from monai.transforms import RandAffine

    from scripts.handlers import compute_score_statistics

    images = textured(10, seed=8)
    loader = DataLoader([{"image": im} for im in images], batch_size=4)

    def augmentation() -> RandAffine:
        return RandAffine(prob=1.0, translate_range=(3, 3), scale_range=(0.05, 0.05), padding_mode="border")

    detector = copy_detector(score_kind="feature", map_kind="feature", feature_subcells=2)
    compute_score_statistics(detector, loader, "cpu", max_images=4, feature_max_images=10,
                             augmentation=augmentation(), augmented_copies=2, seed=5)
    bank = detector.statistics.density.bank.float()
    assert bank.shape == (16, 30, 4)
    # the copies, made the same way by hand: per batch, each copy in turn, image by image
    reference, copies = augmentation(), [[], []]
    reference.set_random_state(5)
    for start in range(0, 10, 4):
        for copy in copies:
            copy += [torch.as_tensor(reference(image)) for image in images[start:start + 4]]
    want = copy_detector(score_kind="feature", map_kind="feature", feature_subcells=2)
    with torch.no_grad():
        moved = torch.stack(copies[0] + copies[1])
        assert not torch.allclose(moved[:10], images, atol=1e-3) and not torch.allclose(moved[:10], moved[10:])
        want.update_statistics({**want.raw_scores(images[:4]), "pooled_features": want.pooled_features(images),
                                "augmented_features": want.pooled_features(moved)})
    for name, value in want.statistics.state_dict().items():
        torch.testing.assert_close(detector.statistics.state_dict()[name], value, msg=name)
    again = copy_detector(score_kind="feature", map_kind="feature", feature_subcells=2)
    compute_score_statistics(again, loader, "cpu", max_images=4, feature_max_images=10,
                             augmentation=augmentation(), augmented_copies=2, seed=5)
    assert torch.equal(again.statistics.density.bank, detector.statistics.density.bank)
    plain = copy_detector(score_kind="feature", map_kind="feature", feature_subcells=2)
    compute_score_statistics(plain, loader, "cpu", max_images=4, feature_max_images=10,
                             augmentation=augmentation(), augmented_copies=0)
    assert plain.statistics.density.bank.shape == (16, 10, 4)


def test_augmented_copies_under_bf16_autocast_are_the_fp32_ones() -> None:
    """With ``amp`` the augmentation runs outside autocast (MONAI's affine grid goes through numpy, which has no
    bf16; under autocast it raised 'unsupported ScalarType BFloat16' at the first epoch of ``--amp true``), so the
    augmented copies, and the bank, are those of fp32 up to bf16 rounding."""
    from monai.data import DataLoader
    from monai.transforms import RandAffine

    from scripts.handlers import compute_score_statistics

    loader = DataLoader([{"image": im} for im in textured(6, seed=9)], batch_size=3)
    banks = []
    for amp in (False, True):
        detector = copy_detector(score_kind="feature", map_kind="feature", feature_subcells=2)
        augmentation = RandAffine(prob=1.0, translate_range=(3, 3), scale_range=(0.05, 0.05), padding_mode="border")
        compute_score_statistics(detector, loader, "cpu", max_images=3, feature_max_images=6, amp=amp,
                                 augmentation=augmentation, augmented_copies=1, seed=5)
        banks.append(detector.statistics.density.bank.float())
    assert banks[1].shape == banks[0].shape == (16, 12, 4)
    scale = banks[0].abs().max().item()
    torch.testing.assert_close(banks[1], banks[0], rtol=0, atol=0.05 * scale)
