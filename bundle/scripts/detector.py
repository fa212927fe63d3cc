"""The deployable anomaly detector: generator + discriminator + the score statistics and threshold."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.networks.layers import gaussian_1d
from torch import nn

from .feature_density import FEATURE_MAP_MAX, FeatureDensity

__all__ = [
    "SCORE_KINDS",
    "MAP_KINDS",
    "ScoreStatistics",
    "AnomalyDetector",
    "ImageSizeMismatchError",
    "FeatureSettingsMismatchError",
    "IntensitySettingsMismatchError",
    "FEATURE_MAP_MAX",
    "percentiles_override",
    "recorded_percentiles",
]

SCORE_KINDS = ("discriminator", "reconstruction", "feature", "combined")
"""Image scores, :meth:`AnomalyDetector.normalise`; ``"feature"`` and ``"combined"`` need the feature statistics."""

MAP_KINDS = ("residual", "feature")
"""Anomaly maps: ``|x - G(x)|`` or the encoder-feature distance map."""

logger = logging.getLogger(__name__)


def percentiles_override(percentiles: Sequence[float] | None) -> str:
    """The command-line override that sets ``intensity_percentiles`` to ``percentiles`` (a pair or ``None``)."""
    if percentiles is None:
        return "--intensity_percentiles '$None'"
    return f"--intensity_percentiles \"[{', '.join(f'{float(p):g}' for p in percentiles)}]\""


class IntensitySettingsMismatchError(RuntimeError):
    """Weights and statistics recorded with another intensity scaling (``intensity_percentiles``) than configured."""


def describe_scaling(percentiles: Sequence[float] | None) -> str:
    """In words, how ``intensity_percentiles`` scales the images."""
    if percentiles is None:
        return "images as loaded"
    return f"images whose {percentiles[0]:g}-{percentiles[1]:g} % intensity percentiles are scaled to [0, 1]"


def recorded_percentiles(recorded: torch.Tensor) -> tuple[float, float] | None:
    """A recorded ``intensity_percentiles`` buffer (2 values, -1 for none) as a pair or ``None``."""
    values = [float(v) for v in recorded.flatten()]
    return None if min(values) < 0 else (values[0], values[1])


class ScoreStatistics(nn.Module):
    """Score-normalisation statistics and the decision threshold, kept as buffers (no parameters).

    ``pixel_mean``/``pixel_std`` (``1 x 1 x H x W``) hold the per-pixel mean and standard deviation of the
    smoothed reconstruction residual over normal training images (mean 0 and std 1 until measured);
    ``mean``/``std`` hold one value per raw image score, index 0 the discriminator logit and index 1 the
    reconstruction score, over the same images; ``ready`` says whether they were measured; ``threshold`` is
    the decision threshold on the normalised anomaly score of the detector's kind.

    ``std_floor`` (a scalar buffer) is the fraction of the median per-pixel std added to every pixel's std when
    standardising: pixels where normal residuals hardly vary (the mediastinum, the border) then do not outweigh
    larger residuals where they vary more (lung bases, heart border). It travels with the statistics because the
    image-level ``mean``/``std`` were measured with it: a loaded state dict's value replaces the constructor's.

    ``intensity_percentiles`` (a buffer of 2 values, -1 for none) records how the images the model was trained and
    measured on were scaled: each image's ``[low, high]`` intensity percentiles mapped to ``[0, 1]`` (clipped), as the
    bundle's preprocessing does (``ScaleIntensityRangePercentilesd``), or left as loaded. Loading statistics recorded
    with other percentiles raises :class:`IntensitySettingsMismatchError`, which names the override to pass;
    statistics of bundles before 0.6 (no record) were measured on images as loaded.

    ``density`` (optional) is the per-location model of the encoder features
    (:class:`scripts.feature_density.FeatureDensity`), measured with the other statistics and saved with them.

    A state dict written before the per-pixel buffers (or, with ``density``, the feature statistics) existed
    loads without error: those statistics keep their defaults and ``ready`` is cleared, so that they are
    measured again. Without ``density``, feature statistics in the state dict are left unused. One written before
    ``std_floor`` existed loads with ``std_floor`` 0, the standardisation its statistics were measured with.

    Args:
        img_size: side ``H = W`` of the scored images.
        eps: added to the per-pixel std when standardising, so pixels where every training residual is the
            same (e.g. a black border) do not divide by zero.
        std_floor: the fraction of the median per-pixel std added to each pixel's std, >= 0.
        density: the feature model, or ``None`` for none.
        intensity_percentiles: ``(low, high)``, ``0 <= low < high <= 100``, or ``None``: how the scored images are
            scaled by the preprocessing (recorded, not applied here).
    """

    PIXEL_BUFFERS = ("pixel_mean", "pixel_std")

    def __init__(
        self,
        img_size: int,
        eps: float = 1e-3,
        std_floor: float = 0.4,
        density: FeatureDensity | None = None,
        intensity_percentiles: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if img_size < 1:
            raise ValueError(f"img_size must be positive, got {img_size}.")
        if std_floor < 0:
            raise ValueError(f"std_floor must be >= 0, got {std_floor}.")
        if intensity_percentiles is not None:
            low, high = (float(p) for p in intensity_percentiles)
            if not 0 <= low < high <= 100:
                raise ValueError(f"intensity_percentiles must be [low, high] with 0 <= low < high <= 100 (or None), "
                                 f"got {list(intensity_percentiles)}.")
        recorded = [-1.0, -1.0] if intensity_percentiles is None else [float(p) for p in intensity_percentiles]
        self.register_buffer("intensity_percentiles", torch.tensor(recorded))
        self.eps = eps
        self.register_buffer("std_floor", torch.tensor(float(std_floor)))
        self.register_buffer("mean", torch.zeros(2))
        self.register_buffer("std", torch.ones(2))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("threshold", torch.full((), 0.5))
        self.register_buffer("pixel_mean", torch.zeros(1, 1, img_size, img_size))
        self.register_buffer("pixel_std", torch.ones(1, 1, img_size, img_size))
        self.density = density

    @property
    def percentiles(self) -> tuple[float, float] | None:
        """The recorded ``intensity_percentiles`` as a pair, ``None`` for images as loaded."""
        return recorded_percentiles(self.intensity_percentiles)

    def _check_percentiles(self, saved: Any) -> None:
        """Refuse statistics (and the weights they belong to) recorded with another intensity scaling."""
        saved = recorded_percentiles(saved) if isinstance(saved, torch.Tensor) else None
        if saved != self.percentiles:
            raise IntensitySettingsMismatchError(
                f"the model was trained and measured on {describe_scaling(saved)}, and this configuration feeds it "
                f"{describe_scaling(self.percentiles)}: pass {percentiles_override(saved)} (models of bundles before "
                "0.6 were trained on images as loaded)."
            )

    def standardise(self, residual: torch.Tensor) -> torch.Tensor:
        """Per-pixel z-score ``(residual - pixel_mean) / (pixel_std + std_floor * median(pixel_std) + eps)`` of
        B x 1 x H x W residuals (``torch.median`` over all pixels: the lower middle value for an even count)."""
        scale = self.pixel_std + self.std_floor * self.pixel_std.median() + self.eps
        return (residual - self.pixel_mean) / scale

    def update_pixels(self, residual: torch.Tensor) -> None:
        """Measure the per-pixel statistics from the smoothed residuals of N training images (N x 1 x H x W)."""
        residual = residual.float().to(self.pixel_mean.device)
        if residual.shape[1:] != self.pixel_mean.shape[1:]:
            raise ValueError(f"residuals must be N x {tuple(self.pixel_mean.shape[1:])}, got {tuple(residual.shape)}.")
        self.pixel_mean.copy_(residual.mean(0, keepdim=True))
        self.pixel_std.copy_(residual.std(0, keepdim=True, unbiased=residual.shape[0] > 1))

    def update(self, disc_logit: torch.Tensor, recon_error: torch.Tensor) -> None:
        """Measure the image-level statistics from raw scores of N training images (each of shape N, on any device:
        the logits come gathered on the CPU, the reconstruction scores from the per-pixel statistics' device).

        ``recon_error`` must be scored with the per-pixel statistics already measured
        (:meth:`AnomalyDetector.update_statistics` does both in order).
        """
        raw = torch.stack([disc_logit.float().to(self.mean.device), recon_error.float().to(self.mean.device)])
        self.mean.copy_(raw.mean(1))
        self.std.copy_(raw.std(1, unbiased=raw.shape[1] > 1).clamp_min(1e-6))
        self.ready.fill_(True)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        self._check_percentiles(state_dict.get(prefix + "intensity_percentiles"))
        absent = [prefix + name for name in self.PIXEL_BUFFERS if prefix + name not in state_dict]
        no_density = self.density is not None and prefix + "density.bank" not in state_dict
        floor_key = prefix + "std_floor"
        configured_floor = float(self.std_floor)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.density is None:  # feature statistics saved with the model are not used by a detector without them
            unused = [key for key in unexpected_keys if key.startswith(prefix + "density.")]
            for key in unused:
                unexpected_keys.remove(key)
            if unused:
                logger.info("the model's encoder-feature statistics are not used: this detector has none "
                            "(feature_depth None).")
        if prefix + "intensity_percentiles" in missing_keys:  # bundles before 0.6: images as loaded, as checked
            missing_keys.remove(prefix + "intensity_percentiles")
        if floor_key not in state_dict:
            if floor_key in missing_keys:
                missing_keys.remove(floor_key)
            self.std_floor.zero_()
        if float(self.std_floor) != configured_floor:
            logger.warning("the loaded score statistics were measured with residual_std_floor %g: it scores with that "
                           "instead of %g.", float(self.std_floor), configured_floor)
        if no_density:
            self.ready.fill_(False)
            logger.warning("the loaded score statistics have no encoder-feature statistics of this kind (left out "
                           "by '--remeasure_statistics true', or a model of a bundle before 0.5, which kept per-cell "
                           "Gaussians): they are marked as not measured and must be measured again.")
        if not absent:
            return
        for key in absent:
            if key in missing_keys:
                missing_keys.remove(key)
        self.pixel_mean.zero_()
        self.pixel_std.fill_(1.0)
        self.ready.fill_(False)
        logger.warning("the loaded score statistics predate the per-pixel reconstruction statistics: they are "
                       "marked as not measured and must be measured again.")


class ImageSizeMismatchError(RuntimeError):
    """Weights trained at one ``img_size`` loaded into a detector built at another."""


class FeatureSettingsMismatchError(RuntimeError):
    """Weights whose feature statistics were measured with other feature settings (depth, grid, subcells, mirror,
    centre)."""


class AnomalyDetector(nn.Module):
    """Scores chest radiographs with a trained SimSID generator and discriminator.

    Four image scores are offered (``docs/method.md``, "Scoring"):

    - ``"discriminator"`` (the paper's): ``s = D(G(x))`` logit, standardised by the mean and standard
      deviation of the same quantity over training images, anomaly score ``1 - sigmoid(z)``.
    - ``"reconstruction"``: the residual ``x - G(x)`` is smoothed with a Gaussian (``residual_sigma``) and
      standardised per pixel by its mean and std over normal training images (the std plus
      ``residual_std_floor`` times its median over the image); the raw score is the mean of the largest
      ``residual_top_fraction`` of the squared per-pixel z-scores. It is standardised over the
      training images like the discriminator's, anomaly score ``sigmoid(z)``. Fine anatomy that the
      generator cannot reproduce in normal images too (ribs, vessels) thus counts less than residuals where
      normal images have none.
    - ``"feature"`` (with ``feature_depth``): the generator's encoder feature at depth ``feature_depth`` is
      average-pooled over each of ``feature_subcells x feature_subcells`` parts of every cell of a
      ``feature_grid x feature_grid`` grid, and each cell's descriptor (its parts side by side, with
      ``feature_mirror`` also each part minus the part mirrored left-right; with ``feature_centre`` each part less
      the image's mean feature) is compared with the
      descriptors of normal training images there (:class:`scripts.feature_density.FeatureDensity`: the squared
      distance to the nearest, after whitening by their shrunk covariance); the raw score is the largest cell
      distance, each first standardised by the cell's mean and shrunk spread on normal images, and it is then
      standardised over the training images, anomaly score ``sigmoid(z)``.
      It sees findings the generator reproduces and so leaves out of the residual.
    - ``"combined"``: ``sigmoid(z_reconstruction + z_feature)``.

    All lie in [0, 1], higher = more abnormal. The anomaly map (``map_kind``) is ``"residual"``, ``|x - G(x)|``, or
    ``"feature"``, per cell the larger of the square root of the cell distance and of those smoothed over the grid by
    a Gaussian of ``feature_map_sigma`` cells, each relative to the value that 1 % of the cells of normal training
    images exceed (so below 1 on normal cells, clipped at ``FEATURE_MAP_MAX``), bilinearly upsampled to the image
    (:meth:`scripts.feature_density.FeatureDensity.map`).
    The statistics and the decision threshold are buffers, so they are saved in the state dict with the weights and
    travel with an exported TorchScript module; they are made on the device of the generator's weights.

    Args:
        generator: a SimSID generator whose ``forward(x)`` returns a dict with ``"recon"`` (and, with
            ``feature_depth``, whose ``forward(x, feature_depth=d)`` adds ``"features"``, the encoder feature at
            depth ``d`` as whole images, whose ``encoder_feature(x, d)`` returns that feature alone, and whose
            ``features`` lists the channels per depth).
        discriminator: maps B x 1 x H x W images to B x 1 logits.
        score_kind: which score ``forward`` returns, one of ``SCORE_KINDS``.
        img_size: side of the scored images; ``None`` takes ``generator.img_size``.
        residual_sigma: standard deviation in pixels of the Gaussian that smooths the residual (0: none);
            ``None`` takes ``img_size / 64``.
        residual_top_fraction: fraction of the pixels, the largest squared z-scores, whose mean is the raw
            reconstruction score (at least one pixel), in (0, 1].
        residual_std_floor: fraction of the median per-pixel std of normal residuals added to every pixel's std
            in the z-score (:class:`ScoreStatistics`), >= 0; a loaded state dict's value replaces it.
        feature_depth: encoder depth of the feature statistics (0: the stem's output, ``i``: after down block
            ``i``); ``None`` for none (then only the discriminator and reconstruction scores and the residual map).
        feature_grid: cells per side of the feature statistics; ``feature_grid * feature_subcells`` must divide the
            feature's side ``img_size / 2 ** feature_depth``.
        feature_shrinkage: covariance shrinkage of the feature statistics' whitening (:class:`FeatureDensity`).
        feature_subcells: parts per side of a cell pooled separately into its descriptor (:class:`FeatureDensity`).
        feature_mirror: add each part's difference to the part mirrored left-right to the descriptor
            (:class:`FeatureDensity`).
        feature_centre: subtract the image's mean feature from every part before the descriptor is formed
            (:class:`FeatureDensity`).
        map_kind: the anomaly map, one of ``MAP_KINDS``.
        feature_map_sigma: standard deviation, in cells, of the Gaussian that smooths the feature map (0: none),
            >= 0; a model keeps the smoothing its statistics were measured with until they are measured again.
        intensity_percentiles: how the preprocessing scales each image's intensities (``[low, high]`` percentiles
            to ``[0, 1]``, or ``None``); recorded with the statistics (:class:`ScoreStatistics`), so weights trained
            with other scaling are refused.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        score_kind: str = "discriminator",
        img_size: int | None = None,
        residual_sigma: float | None = None,
        residual_top_fraction: float = 0.01,
        residual_std_floor: float = 0.4,
        feature_depth: int | None = None,
        feature_grid: int = 8,
        feature_shrinkage: float = 0.3,
        map_kind: str = "residual",
        feature_subcells: int = 1,
        feature_map_sigma: float = 0.75,
        intensity_percentiles: Sequence[float] | None = None,
        feature_mirror: bool = False,
        feature_centre: bool = False,
    ) -> None:
        super().__init__()
        if score_kind not in SCORE_KINDS:
            raise ValueError(f"score_kind must be one of {SCORE_KINDS}, got {score_kind!r}.")
        if map_kind not in MAP_KINDS:
            raise ValueError(f"map_kind must be one of {MAP_KINDS}, got {map_kind!r}.")
        if feature_depth is None and (score_kind in ("feature", "combined") or map_kind == "feature"):
            raise ValueError(f"score_kind {score_kind!r} with map_kind {map_kind!r} needs the feature statistics: "
                             "set feature_depth.")
        if img_size is None:
            img_size = getattr(generator, "img_size", None)
            if img_size is None:
                raise ValueError("img_size is needed: the generator has no 'img_size' attribute.")
        img_size = int(img_size)
        residual_sigma = img_size / 64 if residual_sigma is None else float(residual_sigma)
        if residual_sigma < 0:
            raise ValueError(f"residual_sigma must be >= 0, got {residual_sigma}.")
        if not 0 < residual_top_fraction <= 1:
            raise ValueError(f"residual_top_fraction must be in (0, 1], got {residual_top_fraction}.")
        self.generator = generator
        self.discriminator = discriminator
        self.score_kind = score_kind
        self.residual_sigma = residual_sigma
        self.residual_top_fraction = residual_top_fraction
        self.top_k = max(1, int(residual_top_fraction * img_size * img_size))
        self.feature_depth = feature_depth
        self.map_kind = map_kind
        density = None
        if feature_depth is not None:
            channels = getattr(generator, "features", None)
            if channels is None or not 0 <= feature_depth < len(channels):
                raise ValueError(f"feature_depth {feature_depth} is not an encoder depth of the generator "
                                 f"(channels per depth: {channels}).")
            density = FeatureDensity(channels[feature_depth], img_size // 2**feature_depth, feature_grid,
                                     feature_shrinkage, feature_subcells, feature_map_sigma, feature_mirror,
                                     feature_centre)
        self.statistics = ScoreStatistics(img_size, std_floor=residual_std_floor, density=density,
                                          intensity_percentiles=intensity_percentiles)
        # MONAI's GaussianFilter kernel (truncated at 4 sigma), as one 2D kernel: a fixed convolution that traces
        # without data-dependent branches; not in the state dict, it follows from residual_sigma
        kernel = gaussian_1d(torch.tensor(residual_sigma), truncated=4.0) if residual_sigma > 0 else torch.ones(1)
        self.register_buffer("smoothing_kernel", torch.outer(kernel, kernel).float()[None, None], persistent=False)
        # the statistics and the kernel are made here on the CPU: they join the generator on its device, so a
        # detector built around a generator already on a GPU scores there (train.json, evaluate.json)
        weight = next(generator.parameters(), None)
        if weight is not None:
            self.to(weight.device)

    @property
    def score_kinds(self) -> tuple[str, ...]:
        """The image scores this detector computes (:meth:`normalise`): all of ``SCORE_KINDS`` with the feature
        statistics, the discriminator and reconstruction scores without."""
        return SCORE_KINDS if self.statistics.density is not None else SCORE_KINDS[:2]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, refusing first, with what to pass, weights trained at another image size
        (their per-pixel statistics have another shape); ``ckpt_export --ckpt_file`` and the checkpoint loaders
        load through it."""
        saved = state_dict.get("statistics.pixel_mean")
        built = self.statistics.pixel_mean
        if isinstance(saved, torch.Tensor) and saved.shape != built.shape:
            raise ImageSizeMismatchError(
                f"statistics.pixel_mean is {tuple(saved.shape)}, not {tuple(built.shape)}: the weights were trained at "
                f"img_size {saved.shape[-1]} and this network is built at img_size {built.shape[-1]}; pass "
                f"'--img_size {saved.shape[-1]}', or pass the weights file as '--ckpt_path' (the configs read the size "
                "from that file)."
            )
        saved, density = state_dict.get("statistics.density.mean"), self.statistics.density
        measured = "statistics.density.bank" in state_dict  # older feature statistics are dropped and measured again
        if measured and isinstance(saved, torch.Tensor) and density is not None and saved.shape != density.mean.shape:
            grid = math.isqrt(saved.shape[0])
            settings = [f"'--feature_depth {depth} --feature_grid {grid} --feature_subcells {parts} "
                        f"--feature_mirror {str(mirror).lower()}'"
                        for depth, channels in enumerate(self.generator.features) for parts in range(1, 9)
                        for mirror in (False, True) if channels * parts**2 * (1 + mirror) == saved.shape[1]]
            raise FeatureSettingsMismatchError(
                f"the weights' feature statistics describe {saved.shape[0]} cells by {saved.shape[1]} values and this "
                f"detector builds {density.mean.shape[0]} cells by {density.mean.shape[1]} (feature_depth "
                f"{self.feature_depth}, feature_grid {density.grid}, feature_subcells {density.subcells}, "
                f"feature_mirror {str(density.mirror).lower()}): pass the "
                f"feature settings the model was trained with: {' or '.join(settings) or 'those of its training run'}."
            )
        if measured and density is not None:
            saved_centred = state_dict.get("statistics.density.centred")
            was = bool(saved_centred) if isinstance(saved_centred, torch.Tensor) else False  # saved before 0.8: no
            if was != density.centre:
                raise FeatureSettingsMismatchError(
                    f"the weights' feature statistics were measured with feature_centre {str(was).lower()} and this "
                    f"detector builds feature_centre {str(density.centre).lower()}: pass '--feature_centre "
                    f"{str(was).lower()}' (evaluation with '--remeasure_statistics true' measures them again with the "
                    "settings given)."
                )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def __prepare_scriptable__(self) -> nn.Module:
        """Called by ``torch.jit.script``: the detector is exported by tracing (its generator's training path uses
        custom autograd functions that TorchScript cannot compile), so say how instead of failing on an annotation."""
        raise TypeError(
            "the anomaly detector is exported to TorchScript by tracing, not scripting: add '--use_trace true' "
            "(and '--input_shape \"[1, 1, S, S]\"' with the model's img_size S) to the ckpt_export command."
        )

    def smoothed_residual(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Gaussian-smoothed signed residual ``x - recon`` (B x 1 x H x W, float32, zero padding as MONAI's
        ``GaussianFilter``)."""
        residual = x.float() - recon.float()
        with torch.autocast(residual.device.type, enabled=False):  # float32 under mixed precision too
            return F.conv2d(residual, self.smoothing_kernel, padding=self.smoothing_kernel.shape[-1] // 2)

    def residual_score(self, residual: torch.Tensor) -> torch.Tensor:
        """Raw reconstruction score (B) of smoothed residuals (B x 1 x H x W): the mean of the ``top_k``
        largest squared per-pixel z-scores."""
        z2 = self.statistics.standardise(residual.float()).square().flatten(1)
        return z2.topk(self.top_k, dim=1).values.mean(1)

    def raw_scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction and un-normalised scores.

        Args:
            x: B x 1 x H x W images in [0, 1]; a ``MetaTensor`` is read as a plain tensor (the outputs are plain).

        Returns:
            ``"recon"`` B x 1 x H x W, ``"anomaly_map"`` B x 1 x H x W (``map_kind``),
            ``"residual"`` B x 1 x H x W (:meth:`smoothed_residual`), ``"disc_logit"`` B,
            ``"recon_error"`` B (:meth:`residual_score`); with ``feature_depth`` also ``"pooled_features"``
            B x C x grid x grid and ``"feature_score"`` B (the largest standardised cell distance).
        """
        if isinstance(x, MetaTensor):  # no metadata is needed inside; MetaTensor's per-op bookkeeping is not free
            x = x.as_tensor()
        density = self.statistics.density
        out = self.generator(x) if density is None else self.generator(x, feature_depth=self.feature_depth)
        recon = out["recon"]
        residual = self.smoothed_residual(x, recon)
        raw = {"recon": recon, "residual": residual, "disc_logit": self.discriminator(recon).reshape(-1).float(),
               "recon_error": self.residual_score(residual)}
        if self.map_kind == "residual":
            raw["anomaly_map"] = (x - recon).abs()
        if density is not None:
            pooled = density.pool(out["features"])
            distance = density.distance(pooled)
            raw["pooled_features"] = pooled
            raw["feature_score"] = density.image_score(distance)
            if self.map_kind == "feature":
                raw["anomaly_map"] = density.map(distance, x.shape[-2:])
        return raw

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled encoder features of B x 1 x H x W images (``B x C x grid x grid``), running only the encoder
        blocks up to ``feature_depth``: what the feature statistics are measured from."""
        if self.statistics.density is None:
            raise ValueError("this detector has no feature statistics (feature_depth is None).")
        if isinstance(x, MetaTensor):
            x = x.as_tensor()
        return self.statistics.density.pool(self.generator.encoder_feature(x, self.feature_depth))

    @torch.no_grad()
    def update_statistics(self, raw: Mapping[str, torch.Tensor]) -> None:
        """Measure all score statistics over normal training images from their :meth:`raw_scores` (gathered over
        the images): with ``feature_depth`` first the feature statistics from ``"pooled_features"``
        (M x C x grid x grid; these may come from more images, :meth:`pooled_features`) and, if there,
        ``"augmented_features"`` (K * M x C x grid x grid, row ``j`` an augmented copy of image ``j % M``), then the
        per-pixel
        statistics of the smoothed residuals ``"residual"`` (N x 1 x H x W), then the mean and std of the
        discriminator logits ``"disc_logit"`` (N) and of the reconstruction scores the new per-pixel statistics
        give."""
        density = self.statistics.density
        if density is not None:
            density.fit(raw["pooled_features"], raw.get("augmented_features"))
        residual = raw["residual"]
        self.statistics.update_pixels(residual)
        recon_error = self.residual_score(residual.to(self.statistics.pixel_mean.device))
        self.statistics.update(raw["disc_logit"], recon_error)

    def normalise(self, raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Anomaly scores in [0, 1] (higher = more abnormal) of every kind the detector has, each of shape B, from
        :meth:`raw_scores`' ``"disc_logit"``, ``"recon_error"`` and (with ``feature_depth``) ``"feature_score"``."""
        mean, std = self.statistics.mean, self.statistics.std
        z_disc = (raw["disc_logit"] - mean[0]) / std[0]
        z_recon = (raw["recon_error"] - mean[1]) / std[1]
        scores = {"discriminator": 1.0 - torch.sigmoid(z_disc), "reconstruction": torch.sigmoid(z_recon)}
        density = self.statistics.density
        if density is not None:
            z_feature = (raw["feature_score"] - density.score_mean) / density.score_std
            scores["feature"] = torch.sigmoid(z_feature)
            scores["combined"] = torch.sigmoid(z_recon + z_feature)
        return scores

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly map and score.

        Args:
            x: B x 1 x H x W images in [0, 1].

        Returns:
            the anomaly map B x 1 x H x W and the anomaly score B (of ``score_kind``) in [0, 1].
        """
        raw = self.raw_scores(x)
        return raw["anomaly_map"], self.normalise(raw)[self.score_kind]
