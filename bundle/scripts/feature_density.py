"""Per-location Gaussian model of the encoder's features on normal images: the feature score and map.

The generator reproduces large findings (an effusion, an enlarged heart) through its skip connections, so its
reconstruction residual cannot show them; the encoder's features at those places still differ from the features
normal images have there. :class:`FeatureDensity` fits one Gaussian per cell of a ``grid x grid`` partition of the
image to a descriptor of the encoder features of normal training images there (the features average-pooled over each
of ``subcells x subcells`` parts of the cell, side by side) and measures how far a new image's descriptors lie from it
(squared Mahalanobis distance), cell by cell (``docs/method.md``, "Scoring").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeatureDensity", "squared_mahalanobis"]


def squared_mahalanobis(x: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
    """``(x - mean)^T precision (x - mean)`` per cell and image: ``L x N x C`` features, ``L x C`` means and
    ``L x C x C`` precisions -> ``L x N``."""
    diff = x - mean[:, None]
    return torch.einsum("lnc,lcd,lnd->ln", diff, precision, diff)


class FeatureDensity(nn.Module):
    """One Gaussian per grid cell over a descriptor of the encoder features there, kept as buffers.

    A cell's descriptor is the encoder features average-pooled over each of its ``subcells x subcells`` equal parts,
    concatenated (``D = C * subcells ** 2`` values): with ``subcells`` 1 the cell's mean feature; with more it also
    keeps where in the cell a feature lies (a small nodule in one corner of a cell is then not averaged away).

    ``mean`` (``L x D``, ``L = grid ** 2`` cells, row-major) and ``precision`` (``L x D x D``, the inverse of the
    covariance after shrinkage) are measured by :meth:`fit`; ``score_mean``/``score_std`` are the mean and standard
    deviation of the image-level feature score (the largest cell distance) of normal images the Gaussians were not
    fitted to (cross-fitted over the same images), set by :meth:`fit` too. Until fitted, ``mean`` is 0 and
    ``precision`` the identity (the distance is then the squared norm).

    Shrinkage: the covariance ``S`` of a cell becomes ``S + shrinkage * mean(diag(S)) * I``, so it is invertible with
    fewer images than channels and its smallest directions do not dominate the distance.

    Args:
        channels: ``C``, channels of the encoder feature.
        feature_size: side of the (square) encoder feature map, divisible by ``grid * subcells``.
        grid: cells per side.
        shrinkage: the covariance shrinkage, >= 0.
        subcells: parts per side of a cell that the descriptor pools separately, >= 1.

    Shapes: features ``N x C x feature_size x feature_size`` -> pooled descriptors ``N x D x grid x grid`` ->
    distances ``N x grid x grid``. ``channels`` (the attribute) is ``D``.
    """

    BUFFERS = ("mean", "precision", "score_mean", "score_std")

    def __init__(
        self, channels: int, feature_size: int, grid: int = 8, shrinkage: float = 0.01, subcells: int = 1
    ) -> None:
        super().__init__()
        if subcells < 1:
            raise ValueError(f"feature_subcells must be >= 1, got {subcells}.")
        if grid < 1 or feature_size % (grid * subcells):
            raise ValueError(f"the encoder feature ({feature_size} x {feature_size}) cannot be cut into a {grid} x "
                             f"{grid} grid of cells of {subcells} x {subcells} equal parts: choose a feature_grid "
                             f"times feature_subcells that divides {feature_size}.")
        if shrinkage < 0:
            raise ValueError(f"feature_shrinkage must be >= 0, got {shrinkage}.")
        self.channels = channels * subcells**2
        self.grid = grid
        self.subcells = subcells
        self.part = feature_size // (grid * subcells)
        self.shrinkage = shrinkage
        cells = grid * grid
        self.register_buffer("mean", torch.zeros(cells, self.channels))
        self.register_buffer("precision", torch.eye(self.channels).repeat(cells, 1, 1))
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))

    def pool(self, features: Tensor) -> Tensor:
        """``N x C x S x S`` encoder features -> ``N x D x grid x grid`` cell descriptors (float32): channel ``c`` of
        part ``(i, j)`` of a cell (row-major within the cell) is descriptor entry ``(c * subcells + i) * subcells + j``."""
        parts = F.avg_pool2d(features.float(), self.part)  # N x C x (grid * subcells) x (grid * subcells)
        n, c, g, s = parts.shape[0], parts.shape[1], self.grid, self.subcells
        return parts.reshape(n, c, g, s, g, s).permute(0, 1, 3, 5, 2, 4).reshape(n, c * s * s, g, g)

    def distance(self, pooled: Tensor) -> Tensor:
        """Squared Mahalanobis distance of every cell, ``N x C x grid x grid`` -> ``N x grid x grid`` (float32)."""
        with torch.autocast(pooled.device.type, enabled=False):
            dist = squared_mahalanobis(pooled.float().flatten(2).permute(2, 0, 1), self.mean, self.precision)
        return dist.T.reshape(pooled.shape[0], self.grid, self.grid)

    @staticmethod
    def image_score(distance: Tensor) -> Tensor:
        """The image-level feature score: the largest cell distance, ``N x grid x grid`` -> ``N``."""
        return distance.flatten(1).amax(1)

    def _gaussians(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-cell mean (``L x C``) and shrunk precision (``L x C x C``) of ``L x N x C`` features, float64."""
        mean = x.mean(1)
        centred = x - mean[:, None]
        cov = centred.transpose(1, 2) @ centred / (x.shape[1] - 1)
        scale = cov.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
        eye = torch.eye(self.channels, dtype=cov.dtype, device=cov.device)
        return mean, torch.linalg.inv(cov + self.shrinkage * scale[:, None, None] * eye)

    @torch.no_grad()
    def fit(self, pooled: Tensor, folds: int = 5) -> None:
        """Measure every cell's Gaussian from the pooled descriptors of N normal images (``N x D x grid x grid``,
        N >= 3), and the mean and standard deviation of the image score of a normal image the model has not seen.

        An image's distance to a Gaussian fitted with it is smaller than a new image's (the more so the fewer the
        images per channel), so the score statistics come from ``folds``-fold cross-fitting: each fold is scored
        by the Gaussians of the other images (image ``i`` is in fold ``i % folds``, so these two values depend on the
        images' order, e.g. how the ranks' shards were gathered). The Gaussians kept are fitted to all N images.
        """
        n = pooled.shape[0]
        if n < 3:
            raise ValueError(f"the feature statistics need at least 3 training images, got {n}.")
        if pooled.shape[1:] != (self.channels, self.grid, self.grid):
            raise ValueError(f"pooled features must be N x {self.channels} x {self.grid} x {self.grid}, "
                             f"got {tuple(pooled.shape)}.")
        x = pooled.double().flatten(2).permute(2, 0, 1).to(self.mean.device)  # L x N x C
        fold = torch.arange(n, device=x.device) % min(folds, n)
        held_out = []
        for k in range(int(fold.max()) + 1):
            mean, precision = self._gaussians(x[:, fold != k])
            held_out.append(squared_mahalanobis(x[:, fold == k], mean, precision).amax(0))  # image scores
        scores = torch.cat(held_out)
        mean, precision = self._gaussians(x)
        self.mean.copy_(mean)
        self.precision.copy_(precision)
        self.score_mean.copy_(scores.mean())
        self.score_std.copy_(scores.std().clamp_min(1e-6))

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
        """A state dict written before the feature statistics existed loads without them: they keep their unfitted
        defaults (the owner, :class:`scripts.detector.ScoreStatistics`, marks its statistics as not measured)."""
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if all(prefix + name not in state_dict for name in self.BUFFERS):
            for name in self.BUFFERS:
                if prefix + name in missing_keys:
                    missing_keys.remove(prefix + name)
