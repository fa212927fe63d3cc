"""Projection and acquisition of the second synthetic set: attenuation -> detector -> displayed image.

The attenuation map (soft tissue, lung air, heart, mediastinum, bones, markings, breasts, trachea, gastric
bubble, and a finding's layers) is turned into photon counts ``N0 * exp(-k * A)`` with scatter (a blurred
fraction of the primary beam), the shadow of an anti-scatter grid (a fine stripe pattern), collimator shutters
(no exposure outside the field), Poisson quantum noise (Gaussian approximation), detector blur, and the log
transform; a window, gamma and brightness make the displayed image (bright = dense, as on a PA film).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import Anatomy, Grid, anatomy_fields, body_half_width, rib_layer
from .findings import Finding, Layers, apply_finding, heart_widths
from .texture import gaussian_blur, power_noise, vessel_trees

__all__ = ["Acquisition", "sample_acquisition", "render"]


@dataclass(frozen=True)
class Acquisition:
    """Exposure and detector of one image (pixel lengths refer to a 256 x 256 image).

    ``grid_period`` 0 means no anti-scatter grid lines; ``collimation`` is the shutter margin on the (left,
    right, top, bottom) image edges as a fraction of the image size (0 = none).
    """

    mu: float
    photons: float
    scatter: float
    grid_period: float
    grid_depth: float
    grid_horizontal: bool
    collimation: tuple[float, float, float, float]
    blur: float
    window: tuple[float, float]
    gamma: float
    brightness: float
    rib_density: float
    noise_seed: int


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    """Draw one image's exposure, grid, shutters, detector and display settings."""

    def uni(low: float, high: float) -> float:
        return float(rng.uniform(low, high))

    has_grid = rng.uniform() < 0.45
    margins = tuple(uni(0.0, 0.07) if rng.uniform() < 0.1 else 0.0 for _ in range(4))
    return Acquisition(
        mu=uni(1.9, 2.6),
        photons=float(np.exp(rng.uniform(np.log(700.0), np.log(5000.0)))),
        scatter=uni(0.05, 0.25),
        grid_period=uni(2.2, 3.6) if has_grid else 0.0,
        grid_depth=uni(0.03, 0.08),
        grid_horizontal=bool(rng.uniform() < 0.3),
        collimation=margins,
        blur=uni(0.4, 0.9),
        window=(uni(-0.04, 0.10), uni(1.20, 1.45)),
        gamma=uni(0.75, 1.35),
        brightness=uni(-0.06, 0.06),
        rib_density=uni(0.08, 0.13),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _attenuation(a: Anatomy, grid: Grid, finding: Finding | None, rib_density: float) -> tuple[np.ndarray, np.ndarray]:
    """Projected attenuation (``H x W`` float32) and the finding's mask (``H x W`` bool, empty without one)."""
    u, v = grid.u, grid.v
    rng = np.random.default_rng(a.texture_seed)
    fields = anatomy_fields(a, grid, heart_widths(a, finding))
    lungs = fields["lung_left"] + fields["lung_right"]
    layers = Layers(
        air=fields["lung_left"] * fields["lung_depth_left"] + fields["lung_right"] * fields["lung_depth_right"],
        markings=0.12 * vessel_trees(a, grid, rng) + 0.018 * power_noise(rng, grid.size, 2.4, low_cut=4.0),
        extra=np.zeros_like(u),
    )
    mask = np.zeros(u.shape, bool)
    if finding is not None:
        mask = apply_finding(finding, a, grid, fields, layers)
    body = fields["body"]
    profile = np.sqrt(np.clip(1.0 - (u / body_half_width(a, v)) ** 2, 0.0, 1.0)) * body
    bones = rib_layer(a, grid)
    heart = fields["heart"]
    trachea = np.exp(-(((u - layers.trachea_shift * np.clip(v + 0.9, 0, 1)) / 0.045) ** 4)) * (v > -1.0) * (v < -0.22)
    attenuation = (
        profile
        - 0.60 * layers.air
        + lungs * layers.markings
        + 0.12 * np.maximum(heart, fields["below"] * body)
        + 0.10 * fields["mediastinum"]
        + 0.12 * bones["spine"] * body
        + rib_density * bones["ribs"] * (1.0 - 0.6 * fields["below"]) * body
        + 0.18 * bones["clavicles"] * body
        - 0.12 * trachea * body
        + layers.extra
    )
    if a.breast > 0:
        for side in (-1, 1):
            du, dv = (side * u - 0.45) / 0.32, (v - a.breast_level) / 0.30
            disc = np.clip((1.0 - np.hypot(du, dv)) / 0.12, 0.0, 1.0) * (dv > -0.6)
            attenuation += 0.16 * a.breast * disc * np.sqrt(np.clip(1.0 - du**2, 0.0, 1.0)) * body
    if a.gastric_bubble > 0:
        bubble = np.clip((1.0 - np.hypot((u - 0.40) / 0.10, (v - a.costophrenic[1] + 0.02) / 0.06)) / 0.15, 0, 1)
        attenuation -= 0.25 * a.gastric_bubble * bubble * fields["below"]
    return attenuation.astype(np.float32), mask


def _detector(attenuation: np.ndarray, grid: Grid, acq: Acquisition) -> np.ndarray:
    """Log-transformed detector signal (``H x W`` float32, in attenuation units) with scatter, grid, shutters,
    quantum noise and blur."""
    size = grid.size
    rng = np.random.default_rng(acq.noise_seed)
    primary = np.exp(-acq.mu * attenuation)
    beam = primary + acq.scatter * gaussian_blur(primary, 0.08 * size)
    if acq.grid_period > 0:
        axis = np.arange(size, dtype=np.float32) * (256.0 / size)
        stripes = 0.5 + 0.5 * np.cos(2.0 * np.pi * axis / acq.grid_period)
        beam = beam * (1.0 - acq.grid_depth * (stripes[:, None] if acq.grid_horizontal else stripes[None, :]))
    left, right, top, bottom = acq.collimation
    x, y = (grid.x + 1.0) / 2.0, (grid.y + 1.0) / 2.0
    open_field = (x >= left) & (x <= 1.0 - right) & (y >= top) & (y <= 1.0 - bottom)
    beam = np.where(open_field, beam, 0.002 * beam)
    counts = acq.photons * beam
    counts = counts + np.sqrt(counts) * rng.standard_normal(counts.shape, dtype=np.float32)
    signal = -np.log(np.maximum(counts, 0.5) / acq.photons) / acq.mu
    return gaussian_blur(signal, acq.blur * size / 256.0)


def render(
    a: Anatomy, acq: Acquisition, size: int = 256, finding: Finding | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render patient ``a`` through acquisition ``acq`` (optionally with ``finding``).

    Returns:
        image: float32 ``size x size`` in [0, 1], bright = dense (as displayed);
        mask: bool ``size x size``, the finding's pixels (all False without one).
    """
    grid = Grid(a, size)
    attenuation, mask = _attenuation(a, grid, finding, acq.rib_density)
    signal = _detector(attenuation, grid, acq)
    low, high = acq.window
    display = np.clip((signal - low) / (high - low), 0.0, 1.0) ** acq.gamma
    return np.clip(display + acq.brightness, 0.0, 1.0).astype(np.float32), mask
