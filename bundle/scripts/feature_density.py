"""Per-location model of the encoder's features on normal images: the feature score and map.

The generator reproduces large findings (an effusion, an enlarged heart) through its skip connections, so its
reconstruction residual cannot show them; the encoder's features at those places still differ from the features
normal images have there. :class:`FeatureDensity` keeps, for each cell of a ``grid x grid`` partition of the image,
the descriptors of the encoder features of normal training images there (the features average-pooled over each of
``subcells x subcells`` parts of the cell, side by side), whitened by the cell's shrunk covariance, and measures how
far a new image's descriptor lies from the nearest of them, cell by cell; the image score is the largest of these
distances, each first standardised by what normal images give in that cell (``docs/method.md``, "Scoring").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import gaussian_1d
from torch import Tensor, nn

from .utils import as_bool

__all__ = ["FEATURE_MAP_MAX", "FeatureDensity"]

FEATURE_MAP_MAX = 10.0
"""The feature map is clipped here (ten times the value that 1 % of normal cells exceed), so its values have a
declared range."""


class FeatureDensity(nn.Module):
    """Per grid cell, the whitened descriptors of normal images and the distance of a new one to the nearest, kept
    as buffers.

    A cell's descriptor is the encoder features average-pooled over each of its ``subcells x subcells`` equal parts,
    concatenated (``D = C * subcells ** 2`` values): with ``subcells`` 1 the cell's mean feature; with more it also
    keeps where in the cell a feature lies (a small nodule in one corner of a cell is then not averaged away). With
    ``mirror`` each part also carries its difference to the part at the mirrored place across the image's vertical
    midline (the same place in the other lung; ``D = 2 * C * subcells ** 2``): most findings lie on one side, while
    exposure, patient size and build are shared by both, so a finding stands out against the patient's own other
    side as well as against other patients. A one-sided finding then also moves the difference part of the mirrored
    cell (by the same amount, the other sign), which shows faintly in the map there. With ``centre`` every part has
    the image's mean feature (over all its parts) subtracted first: what the whole image shares (exposure, the
    detector's processing, noise level) moves every cell alike and is removed, and a cell is compared with normal
    cells by how it differs from the rest of its own image. ``centred`` (a buffer, saved) records whether the bank
    was measured so.

    :meth:`fit` measures, per cell, the descriptors' mean (``mean``, ``L x D``, ``L = grid ** 2`` cells, row-major)
    and a whitening ``whitening`` (``L x D x D``, upper triangular, ``W W^T = (S + shrinkage * mean(diag(S)) * I)^-1``
    with ``S`` the covariance: ``W = L^-T`` of the Cholesky factor ``L L^T`` of the shrunk covariance) and keeps
    every training descriptor whitened, ``bank`` (``L x M x D``: the normal images and, if given, their augmented
    copies; rounded to float16, the precision it is saved in, and used in
    float32, with its squared norms ``bank_norms``, ``L x M``, derived from it and not saved). A cell's distance is
    the squared Euclidean distance of the whitened descriptor to the nearest whitened training descriptor of that
    cell (both whitened by :meth:`whiten`): a Mahalanobis-type metric to the
    nearest normal example rather than to the mean, so normal anatomy that comes in several forms (a small or a large
    patient, a high or a low diaphragm) is near one of them. The shrinkage blends that metric towards the Euclidean
    one (the covariance's smallest directions then do not dominate).

    The image-level feature score (:meth:`image_score`) is the largest standardised cell distance
    ``(d_c - distance_mean_c) / distance_scale_c``: ``distance_mean`` (``L``) is each cell's mean distance over normal
    training images each measured without its own descriptors (its augmented copies included) in the bank, and
    ``distance_scale`` (``L``) is ``sqrt(s_c^2 + mean_c' s_c'^2)`` with ``s_c`` the cell's std of those distances:
    the cell's own spread shrunk towards the cells' common one, as the covariance is shrunk. Cells where normal
    images vary much (the body outline, the shoulders, collimation) then do not dominate the largest distance, and
    quiet cells are not made to by a spread near zero. ``score_mean``/``score_std`` are the mean and standard
    deviation of the image score of the same left-out normal images: what a new normal image gives.

    :meth:`map` turns cell distances into the anomaly map: per
    cell the larger of the square root of the distance over ``sqrt(cell_scale)`` and the square roots smoothed over
    the grid by a Gaussian of ``map_sigma`` cells (edge cells replicated) over ``sqrt(smooth_scale)``, clipped at
    ``FEATURE_MAP_MAX`` and upsampled. ``cell_scale`` and ``smooth_scale`` are the squares of the 99th percentiles of
    the two over the cells of the same left-out normal images, so each is below 1 on 99 % of a new normal image's
    cells: a small finding keeps its sharp peak, a large one is filled in by its neighbours. The smoothing the scales
    were measured with is saved with them (``map_sigma``) and is the one :meth:`map` uses: a model keeps its map until
    its statistics are measured again (then with the ``map_sigma`` given here).
    Until fitted, the bank is one zero row, ``mean`` 0 and ``whitening`` the identity (the distance is then the
    squared norm), ``distance_mean`` 0 and ``distance_scale`` 1 (the image score is then the largest distance, as
    for banks saved before these two existed).

    Args:
        channels: ``C``, channels of the encoder feature.
        feature_size: side of the (square) encoder feature map, divisible by ``grid * subcells``.
        grid: cells per side.
        shrinkage: the covariance shrinkage, >= 0.
        subcells: parts per side of a cell that the descriptor pools separately, >= 1.
        map_sigma: standard deviation, in cells, of the Gaussian that smooths the map, >= 0 (0: none); used from
            the next :meth:`fit` on.
        mirror: add to each part its difference to the mirrored part (left-right) to the descriptor.
        centre: subtract the image's mean feature from every part before the descriptor is formed.
            Both flags may be the ``"true"``/``"false"`` strings of the command line (:func:`scripts.utils.as_bool`).

    Shapes: features ``N x C x feature_size x feature_size`` -> pooled descriptors ``N x D x grid x grid`` ->
    distances ``N x grid x grid``. ``channels`` (the attribute) is ``D``.
    """

    BUFFERS = ("mean", "whitening", "bank", "cell_scale", "smooth_scale", "map_sigma", "score_mean", "score_std",
               "centred", "distance_mean", "distance_scale")

    def __init__(
        self,
        channels: int,
        feature_size: int,
        grid: int = 8,
        shrinkage: float = 0.3,
        subcells: int = 1,
        map_sigma: float = 0.0,
        mirror: bool | str = False,
        centre: bool | str = False,
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
        if map_sigma < 0:
            raise ValueError(f"feature_map_sigma must be >= 0, got {map_sigma}.")
        self.mirror = as_bool(mirror, "feature_mirror")  # the command line's "false" is a (true) string
        self.centre = as_bool(centre, "feature_centre")
        self.channels = channels * subcells**2 * (2 if mirror else 1)
        self.grid = grid
        self.subcells = subcells
        self.part = feature_size // (grid * subcells)
        self.shrinkage = shrinkage
        self.fit_map_sigma = float(map_sigma)
        cells = grid * grid
        self.register_buffer("mean", torch.zeros(cells, self.channels))
        self.register_buffer("whitening", torch.eye(self.channels).repeat(cells, 1, 1))
        self.register_buffer("bank", torch.zeros(cells, 1, self.channels))
        self.register_buffer("bank_norms", torch.zeros(cells, 1), persistent=False)
        self.register_buffer("cell_scale", torch.ones(()))
        self.register_buffer("smooth_scale", torch.ones(()))
        self.register_buffer("map_sigma", torch.zeros(()))
        self.register_buffer("map_kernel", torch.ones(1), persistent=False)
        self._set_map_sigma(float(map_sigma))
        self.register_buffer("distance_mean", torch.zeros(cells))
        self.register_buffer("distance_scale", torch.ones(cells))
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))
        self.register_buffer("centred", torch.tensor(float(self.centre)))

    def pool(self, features: Tensor) -> Tensor:
        """``N x C x S x S`` encoder features -> ``N x D x grid x grid`` cell descriptors (float32): channel ``c`` of
        part ``(i, j)`` of a cell (row-major within the cell) is descriptor entry ``(c * subcells + i) * subcells + j``;
        with ``centre`` each part's features are first less their mean over the image's parts; with ``mirror``,
        channel ``C + c`` is that part's channel ``c`` minus the mirrored part's."""
        parts = F.avg_pool2d(features.float(), self.part)  # N x C x (grid * subcells) x (grid * subcells)
        if self.centre:
            parts = parts - parts.mean((2, 3), keepdim=True)
        if self.mirror:
            parts = torch.cat([parts, parts - parts.flip(-1)], 1)  # N x 2C x (grid * subcells) x (grid * subcells)
        n, c, g, s = parts.shape[0], parts.shape[1], self.grid, self.subcells
        return parts.reshape(n, c, g, s, g, s).permute(0, 1, 3, 5, 2, 4).reshape(n, c * s * s, g, g)

    def whiten(self, cells: Tensor) -> Tensor:
        """``L x N x D`` descriptors -> ``L x N x D``, centred and whitened per cell (float32)."""
        return torch.bmm((cells.float() - self.mean[:, None]).contiguous(), self.whitening)  # strided bmm: 60x slower

    @staticmethod
    def _nearest(queries: Tensor, bank: Tensor, bank_norms: Tensor) -> Tensor:
        """Squared distance of each of ``L x N x D`` queries to every row of the ``L x M x D`` bank (float32, its
        squared norms ``L x M``), ``L x N x M``."""
        cross = torch.bmm(queries, bank.transpose(1, 2))
        return (queries.square().sum(-1)[..., None] + bank_norms[:, None] - 2 * cross).clamp_min(0)

    def _set_bank(self, bank: Tensor) -> None:
        """Keep ``L x M x D`` whitened descriptors as the bank, rounded to float16 (as saved), and their norms."""
        self._buffers["bank"] = bank.to(torch.float16).float()
        self._buffers["bank_norms"] = self.bank.square().sum(-1)

    def _set_map_sigma(self, sigma: float) -> None:
        """Smooth the map with a Gaussian of ``sigma`` cells from now on: MONAI's kernel, truncated at 4 sigma and
        normalised (a uniform map stays uniform), kept as the buffer ``map_kernel`` (derived, not saved)."""
        self.map_sigma.fill_(sigma)
        kernel = gaussian_1d(torch.tensor(sigma), truncated=4.0, normalize=True) if sigma > 0 else torch.ones(1)
        self._buffers["map_kernel"] = kernel.float().to(self.map_sigma.device)

    def _smooth(self, cells: Tensor) -> Tensor:
        """``N x 1 x grid x grid`` -> the same, smoothed separably by ``map_kernel`` (edge cells replicated). MONAI's
        ``separable_filtering`` does the same but tests the kernel's size and value in Python, which stops the
        detector's export by tracing."""
        radius = self.map_kernel.shape[0] // 2
        padded = F.pad(cells, (radius, radius, radius, radius), mode="replicate")
        rows = F.conv2d(padded, self.map_kernel.reshape(1, 1, 1, -1))
        return F.conv2d(rows, self.map_kernel.reshape(1, 1, -1, 1))

    def map(self, distance: Tensor, size: tuple[int, int]) -> Tensor:
        """The anomaly map of cell distances, ``N x grid x grid`` -> ``N x 1 x size`` (float32): per cell the larger of
        the square root of the distance over ``sqrt(cell_scale)`` and the smoothed square roots over
        ``sqrt(smooth_scale)`` (each below 1 on 99 % of a normal image's cells), clipped at ``FEATURE_MAP_MAX``,
        bilinearly upsampled."""
        with torch.autocast(distance.device.type, enabled=False):
            roots = distance.float().clamp_min(0).sqrt()[:, None]
            cells = torch.maximum(roots / self.cell_scale.sqrt(), self._smooth(roots) / self.smooth_scale.sqrt())
            return F.interpolate(cells.clamp_max(FEATURE_MAP_MAX), size=size, mode="bilinear", align_corners=False)

    def distance(self, pooled: Tensor) -> Tensor:
        """Cell distances, ``N x D x grid x grid`` descriptors -> ``N x grid x grid`` (float32): the squared
        distance of each whitened descriptor to the nearest whitened training descriptor of its cell."""
        with torch.autocast(pooled.device.type, enabled=False):
            cells = self.whiten(pooled.float().flatten(2).permute(2, 0, 1))  # L x N x D
            dist = self._nearest(cells, self.bank, self.bank_norms).amin(-1)
        return dist.T.reshape(pooled.shape[0], self.grid, self.grid)

    def image_score(self, distance: Tensor) -> Tensor:
        """The image-level feature score: the largest standardised cell distance,
        ``(d - distance_mean) / distance_scale`` per cell, ``N x grid x grid`` -> ``N``."""
        return ((distance.flatten(1) - self.distance_mean) / self.distance_scale).amax(1)

    def _cells(self, pooled: Tensor, what: str) -> Tensor:
        """``N x D x grid x grid`` -> ``L x N x D`` (float64, on the buffers' device), checking the shape."""
        if pooled.shape[1:] != (self.channels, self.grid, self.grid):
            raise ValueError(f"{what} must be N x {self.channels} x {self.grid} x {self.grid}, "
                             f"got {tuple(pooled.shape)}.")
        return pooled.double().flatten(2).permute(2, 0, 1).to(self.mean.device)

    @torch.no_grad()
    def fit(self, pooled: Tensor, augmented: Tensor | None = None) -> None:
        """Measure every cell's whitening and bank from the pooled descriptors of N normal images
        (``N x D x grid x grid``, N >= 3) and, optionally, of augmented copies of them (``K * N x D x grid x grid``,
        row ``j`` a copy of image ``j % N``), and the statistics of the scores of a normal image the bank does not
        hold.

        An image's distance to a bank that holds it (or a copy of it) is about 0, so the score statistics and
        ``cell_scale``, ``distance_mean`` and ``distance_scale`` are measured leaving each image out: image ``i``
        (un-augmented) is scored against the bank without its own rows. The mean and whitening are measured over all
        rows.
        """
        n = pooled.shape[0]
        if n < 3:
            raise ValueError(f"the feature statistics need at least 3 training images, got {n}.")
        rows = [self._cells(pooled, "pooled features")]
        if augmented is not None and augmented.shape[0]:
            if augmented.shape[0] % n:
                raise ValueError(f"the augmented copies ({augmented.shape[0]} descriptors) must be whole copies of the "
                                 f"{n} images.")
            rows.append(self._cells(augmented, "augmented pooled features"))
        x = torch.cat(rows, 1)  # L x M x D
        mean = x.mean(1)
        deviations = x - mean[:, None]
        cov = deviations.transpose(1, 2) @ deviations / (x.shape[1] - 1)
        scale = cov.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
        eye = torch.eye(self.channels, dtype=cov.dtype, device=cov.device)
        # W = L^-T: by triangular solves, not a batched matrix inverse (torch 2.13's batched float64 inverse on CPU
        # fails or returns wrong values above ~128 x 128 with 2 threads)
        factor = torch.linalg.cholesky(cov + self.shrinkage * scale[:, None, None] * eye)
        whitening = torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False).transpose(1, 2)
        self.mean.copy_(mean)
        self.whitening.copy_(whitening)
        self._set_bank(self.whiten(x))  # the training descriptors whitened as a query is
        bank, norms = self.bank, self.bank_norms
        owner = torch.arange(x.shape[1], device=x.device) % n
        own = owner[None] == torch.arange(n, device=x.device)[:, None]  # N x M: image i's own rows
        held_out = torch.stack([
            self._nearest(bank[cell, None, :n], bank[cell, None], norms[cell, None]).squeeze(0)
            .masked_fill(own, float("inf")).amin(1) for cell in range(x.shape[0])
        ])  # L x N
        spread = held_out.var(1)
        self.distance_mean.copy_(held_out.mean(1))
        self.distance_scale.copy_((spread + spread.mean()).clamp_min(1e-12).sqrt())
        per_image = held_out.T.reshape(n, self.grid, self.grid)
        scores = self.image_score(per_image)
        self._set_map_sigma(self.fit_map_sigma)
        roots = per_image.float().sqrt()[:, None]
        for scale, cells in ((self.cell_scale, roots), (self.smooth_scale, self._smooth(roots))):
            scale.copy_(torch.quantile(cells.flatten().double(), 0.99).square().clamp_min(1e-12))
        self.score_mean.copy_(scores.mean())
        self.score_std.copy_(scores.std().clamp_min(1e-6))
        self.centred.fill_(float(self.centre))

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
        """The bank takes the saved number of rows, the map the saved smoothing (a bank of bundle 0.5, which saved
        none, the none its ``cell_scale`` was measured with, and that scale for the smoothed map too); a bank saved
        before ``centred`` existed was measured uncentred, and one saved before ``distance_mean`` and
        ``distance_scale`` existed (bundles before 0.9) keeps 0 and 1, so its image score stays the largest distance
        its score statistics were measured with. A state dict
        written before these statistics existed (none, or the per-cell Gaussians of bundles before 0.5) loads without
        them: they keep their unfitted defaults (the owner, :class:`scripts.detector.ScoreStatistics`, marks its
        statistics as not measured, so they are measured again)."""
        saved_bank = state_dict.get(prefix + "bank")
        if isinstance(saved_bank, Tensor):
            self._buffers["bank"] = torch.zeros(saved_bank.shape, device=self.bank.device)
            cells = saved_bank.shape[0]
            unsmoothed = {"map_sigma": torch.zeros(()), "smooth_scale": state_dict.get(prefix + "cell_scale", 1.0),
                          "centred": torch.zeros(()), "distance_mean": torch.zeros(cells),
                          "distance_scale": torch.ones(cells)}
            state_dict = {**{prefix + k: torch.as_tensor(v) for k, v in unsmoothed.items()}, **state_dict}
        else:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if not isinstance(saved_bank, Tensor):
            for name in self.BUFFERS:
                if prefix + name in missing_keys:
                    missing_keys.remove(prefix + name)
        self._set_bank(self.bank)
        self._set_map_sigma(float(self.map_sigma))

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        """The bank is saved in float16 (half the size; it holds float16 values already)."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "bank"] = destination[prefix + "bank"].to(torch.float16)
