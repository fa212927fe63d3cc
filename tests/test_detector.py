"""The detector's scores and statistics: the per-pixel standardised reconstruction score, state dicts, export."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.networks.layers import GaussianFilter
from torch import nn

from bundle_utils import TINY, workflow
from scripts.detector import AnomalyDetector, IntensitySettingsMismatchError, ScoreStatistics
from scripts.handlers import compute_score_statistics

SIZE = 32


class BlurGenerator(nn.Module):
    """A stand-in generator: the reconstruction is a 3 x 3 box blur of the input (optionally has ``img_size``)."""

    def __init__(self, img_size: int | None = None) -> None:
        super().__init__()
        if img_size is not None:
            self.img_size = img_size

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"recon": F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)}


class ConstantGenerator(nn.Module):
    """A stand-in generator that always reconstructs a flat grey image."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"recon": torch.full_like(x, 0.5)}


def make_detector(generator: nn.Module | None = None, **kwargs) -> AnomalyDetector:
    torch.manual_seed(0)
    discriminator = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 1))
    kwargs.setdefault("img_size", SIZE)
    return AnomalyDetector(generator or BlurGenerator(), discriminator, **kwargs).eval()


def reference_score(x: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, sigma: float,
                    fraction: float, eps: float = 1e-3, floor: float = 0.4) -> torch.Tensor:
    """The raw reconstruction score from its definition: Gaussian-smoothed residual, per-pixel z-score with the std
    raised by ``floor`` times its median over the pixels (the lower middle value), mean of the largest ``fraction``
    of z^2 (sorted, at least one pixel)."""
    residual = GaussianFilter(2, sigma)(x - recon)
    values = std.flatten().sort().values
    median = values[(values.numel() - 1) // 2]
    z2 = (((residual - mean) / (std + floor * median + eps)) ** 2).flatten(1)
    k = max(1, int(fraction * z2.shape[1]))
    return z2.sort(dim=1, descending=True).values[:, :k].mean(1)


def normal_images(n: int, seed: int, squares: tuple[tuple[int, int], ...] = ((4, 4),)) -> torch.Tensor:
    """Grey images with a little noise and a bright 4 x 4 square at each of ``squares`` (by default where every
    normal image has one)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 0.02 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    for r, c in squares:
        x[:, :, r:r + 4, c:c + 4] += 0.3
    return x


def test_raw_score_and_statistics_match_the_definition() -> None:
    sigma, fraction = 1.5, 0.03
    detector = make_detector(residual_sigma=sigma, residual_top_fraction=fraction)
    g = torch.Generator().manual_seed(1)
    train, test = torch.rand(12, 1, SIZE, SIZE, generator=g), torch.rand(5, 1, SIZE, SIZE, generator=g)
    with torch.no_grad():
        raw = detector.raw_scores(train)
        detector.update_statistics(raw)

        smoothed = GaussianFilter(2, sigma)(train - BlurGenerator()(train)["recon"])
        mean, std = smoothed.mean(0, keepdim=True), smoothed.std(0, keepdim=True)
        torch.testing.assert_close(detector.statistics.pixel_mean, mean, atol=1e-6, rtol=0)
        torch.testing.assert_close(detector.statistics.pixel_std, std, atol=1e-6, rtol=1e-5)
        train_scores = reference_score(train, BlurGenerator()(train)["recon"], mean, std, sigma, fraction)
        logits = detector.discriminator(BlurGenerator()(train)["recon"]).reshape(-1)
        want_mean = torch.stack([logits.mean(), train_scores.mean()])
        want_std = torch.stack([logits.std(), train_scores.std()])
        torch.testing.assert_close(detector.statistics.mean, want_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(detector.statistics.std, want_std, atol=1e-5, rtol=1e-5)
        assert bool(detector.statistics.ready)

        out = detector.raw_scores(test)
        recon = BlurGenerator()(test)["recon"]
        torch.testing.assert_close(out["recon_error"], reference_score(test, recon, mean, std, sigma, fraction),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["anomaly_map"], (test - recon).abs())  # the map stays |x - G(x)|
        _, score = detector(test)
        z = (reference_score(test, recon, mean, std, sigma, fraction) - want_mean[1]) / want_std[1]
        torch.testing.assert_close(score, 1 - torch.sigmoid((detector.discriminator(recon).reshape(-1)
                                                               - want_mean[0]) / want_std[0]), atol=1e-5, rtol=0)
        detector.score_kind = "reconstruction"
        torch.testing.assert_close(detector(test)[1], torch.sigmoid(z), atol=1e-5, rtol=0)


def test_unmeasured_statistics_are_mean_zero_std_one() -> None:
    detector = make_detector(residual_sigma=0.0, residual_top_fraction=1.0)
    assert not bool(detector.statistics.ready)
    x = torch.rand(3, 1, SIZE, SIZE)
    with torch.no_grad():
        raw = detector.raw_scores(x)
    residual = x - BlurGenerator()(x)["recon"]  # sigma 0: no smoothing
    torch.testing.assert_close(raw["residual"], residual)
    # std 1 everywhere, so its median is 1 too
    torch.testing.assert_close(raw["recon_error"], (residual / (1 + 0.4 + 1e-3)).square().mean((1, 2, 3)))


def test_residual_where_every_normal_has_it_does_not_count() -> None:
    """A bright square where every training image has it does not raise the score; the same square where
    training images have none does. The mean absolute error counts both squares alike."""
    detector = make_detector(ConstantGenerator(), score_kind="reconstruction", residual_sigma=1.0)
    train = normal_images(60, seed=2)
    with torch.no_grad():
        raw = detector.raw_scores(train)
        detector.update_statistics(raw)
        train_scores = detector.raw_scores(train)["recon_error"]
        normal = detector.raw_scores(normal_images(10, seed=3))
        abnormal = detector.raw_scores(normal_images(10, seed=3, squares=((4, 4), (20, 20))))
        plain = detector.raw_scores(normal_images(10, seed=3, squares=()))
    # the normal test images score like the training images; the extra square raises the score far above them
    assert float(normal["recon_error"].max()) < 1.5 * float(train_scores.max())
    assert float(abnormal["recon_error"].min()) > 20 * float(normal["recon_error"].max())
    # the mean absolute error: the square every normal has adds as much as the one no normal has
    mae = {name: out["anomaly_map"].mean((1, 2, 3)) for name, out in
           (("plain", plain), ("normal", normal), ("abnormal", abnormal))}
    torch.testing.assert_close(mae["normal"] - mae["plain"], mae["abnormal"] - mae["normal"], atol=0, rtol=0.1)


def _set_pixel_statistics(detector: AnomalyDetector, std: torch.Tensor) -> None:
    """Per-pixel statistics by hand: mean 0, the given std (1 x 1 x SIZE x SIZE)."""
    detector.statistics.pixel_mean.zero_()
    detector.statistics.pixel_std.copy_(std)


def test_std_floor_weighs_residuals_where_normal_images_vary_more() -> None:
    """Two images with the same per-pixel z-score (5 std) at one pixel, one where normal residuals vary little
    (std 0.01), one where they vary much (std 0.04): without a floor both score alike, with it the residual where
    normals vary more scores higher, by the factor the definition gives."""
    std = torch.full((1, 1, SIZE, SIZE), 0.02)
    std[..., 0, :4] = 0.01
    std[..., 1, :4] = 0.04  # the median stays 0.02
    x = torch.zeros(2, 1, SIZE, SIZE)
    x[0, 0, 0, 0], x[1, 0, 1, 0] = 0.05, 0.2
    scores = {}
    for floor in (0.0, 0.5):
        detector = make_detector(ConstantGenerator(), residual_sigma=0.0, residual_top_fraction=1 / SIZE ** 2,
                                 residual_std_floor=floor)
        _set_pixel_statistics(detector, std)
        with torch.no_grad():
            scores[floor] = detector.residual_score(x)
    for floor, added in ((0.0, 0.0), (0.5, 0.01)):  # half the median std 0.02
        want = torch.tensor([(0.05 / (0.01 + added + 1e-3)) ** 2, (0.2 / (0.04 + added + 1e-3)) ** 2])
        torch.testing.assert_close(scores[floor], want, rtol=1e-5, atol=0)
    assert float(scores[0.0][1]) < 1.2 * float(scores[0.0][0])  # alike but for eps
    assert float(scores[0.5][1]) > 2.5 * float(scores[0.5][0])


def test_std_floor_travels_with_the_state_dict(caplog) -> None:
    """The floor the statistics were measured with replaces the constructor's, with a warning naming both."""
    source = make_detector(residual_std_floor=0.7)
    x = torch.rand(6, 1, SIZE, SIZE)
    with torch.no_grad():
        raw = source.raw_scores(x)
        source.update_statistics(raw)
    target = make_detector(residual_std_floor=0.1)
    with caplog.at_level(logging.WARNING, logger="scripts.detector"):
        target.load_state_dict(source.state_dict())
    assert float(target.statistics.std_floor) == pytest.approx(0.7)
    assert "residual_std_floor 0.7" in caplog.text and "instead of 0.1" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(target.raw_scores(x)["recon_error"], source.raw_scores(x)["recon_error"])


def test_state_dict_without_std_floor_scores_as_it_was_measured(caplog) -> None:
    """A state dict saved before the floor existed loads with floor 0: the z-scores its image-level statistics were
    measured with (std + eps only)."""
    measured = make_detector(residual_std_floor=0.0)
    x = torch.rand(6, 1, SIZE, SIZE)
    with torch.no_grad():
        raw = measured.raw_scores(x)
        measured.update_statistics(raw)
    old = {k: v for k, v in measured.state_dict().items() if k != "statistics.std_floor"}
    target = make_detector()
    with caplog.at_level(logging.WARNING, logger="scripts.detector"):
        target.load_state_dict(old)  # strict
    assert float(target.statistics.std_floor) == 0.0
    assert bool(target.statistics.ready)
    assert "instead of 0.4" in caplog.text
    with torch.no_grad():
        recon = BlurGenerator()(x)["recon"]
        want = reference_score(x, recon, measured.statistics.pixel_mean, measured.statistics.pixel_std,
                               SIZE / 64, 0.01, floor=0.0)
        torch.testing.assert_close(target.raw_scores(x)["recon_error"], want, atol=1e-5, rtol=1e-5)


def test_statistics_round_trip_through_the_state_dict() -> None:
    source = make_detector()
    x = torch.rand(6, 1, SIZE, SIZE)
    with torch.no_grad():
        raw = source.raw_scores(x)
        source.update_statistics(raw)
    source.statistics.threshold.fill_(0.3)
    state = source.state_dict()
    assert {"statistics.pixel_mean", "statistics.pixel_std"} <= set(state)
    assert not any("smoothing" in key for key in state)  # derived from the constructor arguments

    target = make_detector()
    target.load_state_dict(state)
    for name, buffer in source.statistics.state_dict().items():
        assert torch.equal(target.statistics.state_dict()[name], buffer), name
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_intensity_scaling_is_recorded_and_weights_of_other_scaling_refused(tmp_path) -> None:
    """The statistics record how the images were scaled; weights recorded with other scaling (or with none, as
    every model before bundle 0.6) are refused with the override that fits them, and load where it is passed; the
    configs' checkpoint loader names the file."""
    from ignite.engine import Engine

    from scripts.checkpoint import CheckpointFileLoader, save_atomic

    scaled = make_detector(intensity_percentiles=[2, 98])
    with torch.no_grad():
        scaled.update_statistics(scaled.raw_scores(torch.rand(6, 1, SIZE, SIZE)))
    assert scaled.statistics.percentiles == (2.0, 98.0) and make_detector().statistics.percentiles is None
    with pytest.raises(IntensitySettingsMismatchError, match=r"2-98 % intensity percentiles .* as loaded: pass "
                       r"--intensity_percentiles \"\[2, 98\]\""):
        make_detector().load_state_dict(scaled.state_dict())
    with pytest.raises(IntensitySettingsMismatchError, match="pass --intensity_percentiles \"\\[2, 98\\]\""):
        make_detector(intensity_percentiles=[1, 99]).load_state_dict(scaled.state_dict())
    fits = make_detector(intensity_percentiles=[2, 98])
    fits.load_state_dict(scaled.state_dict())
    assert torch.equal(fits.statistics.pixel_std, scaled.statistics.pixel_std)
    older = {k: v for k, v in make_detector().state_dict().items() if k != "statistics.intensity_percentiles"}
    with pytest.raises(IntensitySettingsMismatchError, match="as loaded.*pass --intensity_percentiles '\\$None'"):
        make_detector(intensity_percentiles=[1, 99]).load_state_dict(older)
    make_detector().load_state_dict(older)  # strict: images as loaded, as they were
    path = tmp_path / "model.pt"
    save_atomic(scaled.state_dict(), path)
    with pytest.raises(ValueError, match=r"model\.pt does not fit .*--intensity_percentiles \"\[2, 98\]\""):
        CheckpointFileLoader(load_path=path, load_dict={"model": make_detector()})(Engine(lambda e, b: None))
    for bad in ([50, 50], [-1, 99], [1, 101]):
        with pytest.raises(ValueError, match="0 <= low < high <= 100"):
            make_detector(intensity_percentiles=bad)


def test_state_dict_without_pixel_statistics_loads_as_not_measured(caplog) -> None:
    measured = make_detector()
    x = torch.rand(6, 1, SIZE, SIZE)
    with torch.no_grad():
        raw = measured.raw_scores(x)
        measured.update_statistics(raw)
    old = {k: v for k, v in measured.state_dict().items() if not k.startswith("statistics.pixel_")}
    old["statistics.mean"] = torch.tensor([0.1, 0.2])
    old["statistics.threshold"] = torch.tensor(0.7)
    assert bool(old["statistics.ready"])

    measured.load_state_dict(old)  # strict: the older state dict still loads
    statistics = measured.statistics
    assert not bool(statistics.ready)
    assert torch.equal(statistics.pixel_mean, torch.zeros(1, 1, SIZE, SIZE))
    assert torch.equal(statistics.pixel_std, torch.ones(1, 1, SIZE, SIZE))
    torch.testing.assert_close(statistics.mean, torch.tensor([0.1, 0.2]))
    assert float(statistics.threshold) == pytest.approx(0.7)
    assert "measured again" in caplog.text

    missing_other = dict(old)
    del missing_other["statistics.threshold"]
    with pytest.raises(RuntimeError, match="statistics.threshold"):  # only the per-pixel buffers may be absent
        make_detector().load_state_dict(missing_other)
    wrong_size = make_detector().state_dict()
    wrong_size["statistics.pixel_mean"] = torch.zeros(1, 1, 16, 16)
    with pytest.raises(RuntimeError, match=f"pixel_mean .* trained at img_size 16 .* built at img_size {SIZE}; pass "
                                           "'--img_size 16'"):
        make_detector().load_state_dict(wrong_size)


def test_compute_score_statistics_uses_the_first_max_images() -> None:
    detector = make_detector(residual_sigma=1.0).train()
    images = torch.rand(10, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    loader = [{"image": images[i:i + 3]} for i in range(0, 10, 3)]
    compute_score_statistics(detector, loader, "cpu", max_images=7)
    assert detector.training  # scored in eval mode, then given back in the mode it had

    reference = make_detector(residual_sigma=1.0)
    with torch.no_grad():
        raw = reference.raw_scores(images[:7])
        reference.update_statistics(raw)
    for name, buffer in reference.statistics.state_dict().items():
        torch.testing.assert_close(detector.statistics.state_dict()[name], buffer, atol=1e-6, rtol=1e-6)


def test_traced_detector_matches_eager() -> None:
    detector = make_detector(score_kind="reconstruction", residual_sigma=1.0)
    with torch.no_grad():
        raw = detector.raw_scores(torch.rand(8, 1, SIZE, SIZE))
        detector.update_statistics(raw)
        traced = torch.jit.trace(detector, torch.rand(1, 1, SIZE, SIZE))
        x = torch.rand(4, 1, SIZE, SIZE)
        for got, want in zip(traced(x), detector(x)):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


class TypeRecordingGenerator(BlurGenerator):
    """The blur generator, recording the type of every input it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[type] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(type(x))
        return super().forward(x)


def test_metatensor_input_is_scored_as_a_plain_tensor() -> None:
    generator = TypeRecordingGenerator()
    detector = make_detector(generator, score_kind="reconstruction")
    x = torch.rand(3, 1, SIZE, SIZE)
    meta = MetaTensor(x.clone(), meta={"filename_or_obj": "a.png"})
    with torch.no_grad():
        plain, from_meta = detector.raw_scores(x), detector.raw_scores(meta)
        outputs = detector(meta)
    assert generator.seen == [torch.Tensor, torch.Tensor, torch.Tensor]  # the network never sees metadata
    for key, value in plain.items():
        assert type(from_meta[key]) is torch.Tensor and torch.equal(from_meta[key], value), key
    assert all(type(out) is torch.Tensor for out in outputs)


def test_constructor_arguments() -> None:
    discriminator = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 1))
    detector = AnomalyDetector(BlurGenerator(img_size=SIZE), discriminator)
    assert detector.statistics.pixel_mean.shape == (1, 1, SIZE, SIZE)
    assert detector.residual_sigma == SIZE / 64
    assert detector.top_k == max(1, int(0.01 * SIZE * SIZE))
    with pytest.raises(ValueError, match="img_size"):
        AnomalyDetector(BlurGenerator(), discriminator)
    for kwargs in ({"residual_sigma": -1.0}, {"residual_top_fraction": 0.0}, {"residual_top_fraction": 1.5},
                   {"score_kind": "mse"}, {"residual_std_floor": -0.1}):
        with pytest.raises(ValueError):
            AnomalyDetector(BlurGenerator(), discriminator, img_size=SIZE, **kwargs)
    with pytest.raises(ValueError, match="residuals must be"):
        ScoreStatistics(SIZE).update_pixels(torch.zeros(2, 1, 16, 16))


def test_residual_is_smoothed_in_float32_under_autocast() -> None:
    detector = make_detector(residual_sigma=1.0)
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        want = detector.raw_scores(x)["residual"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = detector.raw_scores(x)["residual"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("configs", [["train.json"], ["train.json", "evaluate.json"]])
def test_configs_build_the_detector_on_the_device_of_its_generator(configs: list[str]) -> None:
    """``train.json`` puts the generator and discriminator on ``device`` and builds the detector around them; its own
    statistics, feature bank and smoothing kernel must be there too, or the first validation on a GPU fails with
    'Input type (torch.cuda.FloatTensor) and weight type (torch.FloatTensor)'. The ``meta`` device stands in for
    the GPU, which the test machines lack."""
    wf = workflow(configs, "train", "training", **{**TINY, "device": "meta"})
    detector = wf.parser.get_parsed_content("detector")
    tensors = dict(detector.named_parameters()) | dict(detector.named_buffers())
    assert "smoothing_kernel" in tensors and "statistics.pixel_mean" in tensors
    assert any(name.startswith("statistics.density.") for name in tensors)
    elsewhere = sorted(name for name, t in tensors.items() if t.device.type != "meta")
    assert not elsewhere


def test_statistics_gathered_on_the_cpu_are_measured_on_the_detectors_device() -> None:
    """On a GPU the score statistics' inputs come gathered on the CPU (``compute_score_statistics``) while the
    detector and its reconstruction scores live on the GPU; every statistic (feature bank, per-pixel, image-level) is
    measured on the detector's device. The ``meta`` device stands in for the GPU."""
    wf = workflow(["train.json"], "train", "training", **{**TINY, "device": "meta"})
    detector = wf.parser.get_parsed_content("detector")
    density = detector.statistics.density
    n, size = 12, TINY["img_size"]
    features = (n, density.channels, density.grid, density.grid)
    detector.update_statistics({"pooled_features": torch.randn(features), "augmented_features": torch.randn(features),
                                "residual": torch.randn(n, 1, size, size), "disc_logit": torch.randn(n)})
    statistics = dict(detector.statistics.named_buffers())
    assert statistics["ready"].device.type == "meta" and statistics["density.bank"].shape[1] == 2 * n
    assert not sorted(name for name, t in statistics.items() if t.device.type != "meta")
