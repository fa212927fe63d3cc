"""The encoder-feature statistics: per-cell Gaussians, their distances, the feature and combined scores and map."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scripts.detector import FEATURE_MAP_MAX, AnomalyDetector, FeatureSettingsMismatchError
from scripts.feature_density import FeatureDensity
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


def test_fit_and_distance_follow_the_definition() -> None:
    channels, grid, shrinkage = 6, 3, 0.05
    samples, _, _ = correlated_features(405, channels, grid, seed=0)
    train, test = samples[:400], samples[400:]
    density = FeatureDensity(channels, feature_size=grid * 4, grid=grid, shrinkage=shrinkage)
    density.fit(train)
    got = density.distance(test).numpy()
    cells = train.double().flatten(2).permute(2, 0, 1).numpy()  # L x N x C
    for cell in range(grid * grid):
        mean = cells[cell].mean(0)
        cov = np.cov(cells[cell], rowvar=False)
        cov += shrinkage * np.trace(cov) / channels * np.eye(channels)
        diff = test.double().flatten(2)[:, :, cell].numpy() - mean
        want = np.einsum("nc,cd,nd->n", diff, np.linalg.inv(cov), diff)
        np.testing.assert_allclose(got[:, cell // grid, cell % grid], want, rtol=1e-4, atol=1e-4 * want.max())
    assert density.image_score(density.distance(test)).tolist() == pytest.approx(got.reshape(5, -1).max(1), rel=1e-6)


def test_score_statistics_are_those_of_images_the_gaussians_did_not_see() -> None:
    """With few images per channel an image's distance to Gaussians fitted with it is much smaller than a new
    image's; the kept mean and std are cross-fitted, so they describe new normal images."""
    channels, grid = 8, 2
    samples, _, _ = correlated_features(3060, channels, grid, seed=3)
    train, fresh = samples[:60], samples[60:]
    density = FeatureDensity(channels, feature_size=grid, grid=grid, shrinkage=0.01)
    density.fit(train)
    fresh_scores = density.image_score(density.distance(fresh))
    in_sample = density.image_score(density.distance(train)).mean()
    assert float(in_sample) < 0.85 * float(fresh_scores.mean())  # the bias the cross-fitting removes
    assert float(density.score_mean) == pytest.approx(float(fresh_scores.mean()), rel=0.15)
    assert float(density.score_std) == pytest.approx(float(fresh_scores.std()), rel=0.35)


def test_distances_of_normal_samples_average_the_channel_count_and_a_shifted_cell_stands_out() -> None:
    channels, grid = 8, 4
    samples, _, covs = correlated_features(6000, channels, grid, seed=0)
    train, test = samples[:4000], samples[4000:]
    density = FeatureDensity(channels, feature_size=grid, grid=grid, shrinkage=0.0)
    density.fit(train)
    # the squared Mahalanobis distance of a Gaussian sample has mean C (chi-square with C degrees of freedom)
    assert density.distance(test).mean().item() == pytest.approx(channels, rel=0.05)
    shifted = test[:10].clone()
    direction = torch.linalg.eigh(torch.from_numpy(covs[2 * grid + 1]).float()).eigenvectors[:, 0]  # least variance
    shifted[:, :, 2, 1] += 2.0 * direction
    distance = density.distance(shifted)
    assert (distance.flatten(1).argmax(1) == 2 * grid + 1).all()


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
    assert density.channels == 12 and density.mean.shape == (9, 12) and density.precision.shape == (9, 12, 12)
    features = torch.randn(2, 3, 12, 12)
    pooled = density.pool(features)
    assert pooled.shape == (2, 12, 3, 3)
    for channel, i, j in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (2, 1, 1)]:
        rows, cols = slice(4 + 2 * i, 6 + 2 * i), slice(8 + 2 * j, 10 + 2 * j)  # part (i, j) of cell (1, 2)
        torch.testing.assert_close(pooled[:, (channel * 2 + i) * 2 + j, 1, 2], features[:, channel, rows, cols].mean((-2, -1)))


def test_subcells_see_a_finding_that_moves_within_a_cell_without_changing_its_mean() -> None:
    """Normal cells are bright on the left half and dark on the right; the finding mirrors one cell. The cell mean
    does not change, so one Gaussian per cell mean misses it; with 2 x 2 parts per cell it is far from normal."""
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
    detector = copy_detector(score_kind="combined", map_kind="feature")
    with torch.no_grad():
        detector.update_statistics(detector.raw_scores(textured(200, seed=0)))
        normal, abnormal = detector.raw_scores(textured(20, seed=1)), detector.raw_scores(textured(20, 2, True))
        scores_n, scores_a = detector.normalise(normal), detector.normalise(abnormal)
    assert bool(detector.statistics.ready)
    # the residual is zero for every image: the reconstruction score cannot tell them apart
    torch.testing.assert_close(scores_a["reconstruction"], scores_n["reconstruction"])
    assert scores_a["feature"].min() > scores_n["feature"].max()
    assert scores_a["combined"].min() > scores_n["combined"].max()
    # combined = sigmoid(z_reconstruction + z_feature)
    density = detector.statistics.density
    z_feature = (abnormal["feature_score"] - density.score_mean) / density.score_std
    z_recon = (abnormal["recon_error"] - detector.statistics.mean[1]) / detector.statistics.std[1]
    torch.testing.assert_close(scores_a["combined"], torch.sigmoid(z_recon + z_feature))
    # the map: sqrt(distance / C), clipped, upsampled to the image, highest on the lesion's cell (rows 16-23, columns 8-15)
    amap = abnormal["anomaly_map"]
    with torch.no_grad():
        cell_distance = density.distance(F.avg_pool2d(textured(20, 2, True), 8))  # feature = image, 4 x 4 cells
    cells = (cell_distance / 1).sqrt().clamp_max(FEATURE_MAP_MAX)[:, None]  # C = 1 channel, clipped
    want = F.interpolate(cells, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(amap, want)
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
        gross_cells = density.distance(F.avg_pool2d(gross, 8)).sqrt()
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
    old = {k: v for k, v in source.state_dict().items() if ".density." not in k}
    fresh = copy_detector(score_kind="combined", map_kind="feature")
    with caplog.at_level(logging.WARNING, logger="scripts.detector"):
        fresh.load_state_dict(old)
    assert not bool(fresh.statistics.ready)  # measured again before scoring (evaluation) or refused (inference)
    assert "no encoder-feature statistics" in caplog.text
    torch.testing.assert_close(fresh.statistics.pixel_mean, source.statistics.pixel_mean)


def test_weights_measured_with_other_feature_settings_are_refused_with_the_settings_to_pass(tmp_path) -> None:
    """A model of bundle 0.3 (one feature mean per cell) loaded by a detector built with subcells says what to pass,
    instead of torch's size-mismatch list, and the configs' checkpoint loader names the file; with those settings
    it loads and scores as before."""
    from ignite.engine import Engine

    from scripts.checkpoint import CheckpointFileLoader, save_atomic

    source = copy_detector(score_kind="feature", map_kind="feature", feature_subcells=1)
    with torch.no_grad():
        source.update_statistics(source.raw_scores(textured(50, seed=0)))
    with pytest.raises(FeatureSettingsMismatchError, match="16 cells by 1 values .* 16 cells by 4 .*"
                       "'--feature_depth 1 --feature_subcells 1'"):
        copy_detector(score_kind="feature", map_kind="feature", feature_subcells=2).load_state_dict(source.state_dict())
    path = tmp_path / "model.pt"
    save_atomic(source.state_dict(), path)
    loader = CheckpointFileLoader(load_path=path, load_dict={"model": copy_detector(feature_subcells=2)})
    with pytest.raises(ValueError, match=r"model\.pt does not fit .*'--feature_depth 1 --feature_subcells 1'"):
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
