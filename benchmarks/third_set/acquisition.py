"""Acquisition of the third set: geometry, foreign objects, detector and vendor-like processing.

- geometry (:class:`.geometry.Geometry`): PA (65 %, 1.8 m) or AP portable (35 %, 1.0 m: the anterior heart is
  magnified more), patient turned up to 5 degrees about the vertical axis (shifts the mediastinum against the
  spine), shifted up to 0.05 units;
- foreign objects in normal and abnormal images alike (:func:`foreign_objects`): ECG electrodes (adhesive pad
  plus metal snap, on the anterior skin, projected) with lead wires curving out of the field (30 %), and a
  lead side marker "L" or "R" in an upper corner (85 %);
- detector (:func:`expose`): photon counts ``N0 exp(-k A)`` (``A`` the line integral in soft-tissue units),
  scatter (a broad blur of the primary, more without a grid in AP), Gaussian-approximated Poisson noise,
  detector blur, log;
- processing (:func:`process`): two-band unsharp-mask edge enhancement and an S-curve lookup table over a
  percentile window (auto-ranging, as a vendor's chest preset does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.second_set.texture import gaussian_blur

from .anatomy import Anatomy
from .geometry import Geometry, project_points
from .vessels import deposit

__all__ = ["Acquisition", "sample_acquisition", "foreign_objects", "expose", "process", "blur"]

_LETTERS = {
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
}


@dataclass(frozen=True)
class Acquisition:
    """One exposure: geometry, attenuation scale ``k`` (per soft-tissue unit), photons per pixel ``n0`` (at
    256 px), ``scatter`` fraction, detector ``blur`` (pixels at 256 px), edge-enhancement gains/scales
    (pixels at 256 px), window percentiles, S-curve slope and centre, marker ``(letter, corner)`` or None,
    electrode positions ``(E, 2)`` (x, z on the anterior skin) and wire bends, and a noise seed."""

    geometry: Geometry
    k: float
    n0: float
    scatter: float
    blur: float
    enhance: tuple[float, float, float, float]
    window: tuple[float, float]
    curve: tuple[float, float]
    marker: tuple[str, int] | None
    electrodes: np.ndarray
    wires: np.ndarray
    noise_seed: int


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    """Draw one exposure (see the module docstring)."""
    ap = rng.uniform() < 0.35
    geometry = Geometry(
        view="AP" if ap else "PA",
        sid=5.9 if ap else 10.6,
        gap=0.95,
        half_field=rng.uniform(1.16, 1.28) if ap else rng.uniform(1.08, 1.20),
        rotation=np.deg2rad(rng.uniform(-5.0, 5.0)),
        shift=(rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)),
    )
    n_electrodes = int(rng.integers(3, 6)) if rng.uniform() < 0.3 else 0
    electrodes = np.column_stack([rng.uniform(-0.7, 0.7, n_electrodes), rng.uniform(-0.5, 0.6, n_electrodes)])
    wires = rng.uniform(-1.0, 1.0, (n_electrodes, 4))
    marker = (str(rng.choice(("L", "R"))), int(rng.integers(0, 2))) if rng.uniform() < 0.85 else None
    return Acquisition(
        geometry=geometry,
        k=rng.uniform(1.6, 2.4),
        n0=rng.uniform(1500.0, 8000.0),
        scatter=rng.uniform(0.20, 0.40) if ap else rng.uniform(0.06, 0.18),
        blur=rng.uniform(0.5, 1.1),
        enhance=(rng.uniform(0.3, 1.0), rng.uniform(1.5, 3.0), rng.uniform(0.2, 0.6), rng.uniform(12.0, 24.0)),
        window=(rng.uniform(0.3, 2.0), rng.uniform(98.5, 99.8)),
        curve=(rng.uniform(4.0, 7.0), rng.uniform(0.42, 0.56)),
        marker=marker,
        electrodes=electrodes,
        wires=wires,
        noise_seed=int(rng.integers(2**31)),
    )


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (``sigma`` pixels) with mirrored borders (no wrap-around)."""
    pad = min(int(3 * sigma) + 1, image.shape[0] - 1)
    padded = np.pad(image, pad, mode="reflect")
    return gaussian_blur(padded, sigma)[pad:-pad, pad:-pad]


def foreign_objects(acq: Acquisition, a: Anatomy, size: int) -> np.ndarray:
    """Line integral (soft-tissue units, ``size x size``) of the ECG electrodes, lead wires and side marker."""
    out = np.zeros((size, size), np.float32)
    g = acq.geometry
    pixel = 2.0 * g.half_field / size
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    for (ex, ez), bend in zip(acq.electrodes, acq.wires):
        half_x = a.cage_a + a.fat + 0.08
        ey = (a.cage_b + a.fat) * np.sqrt(max(1.0 - (ex / half_x) ** 2, 0.05))
        r, c, m = project_points(g, np.array([ex, ey, ez]), size)
        d = np.hypot(rows - r, cols - c) * pixel / m
        out += 0.08 * np.clip((0.04 - d) / 0.005, 0.0, 1.0) + 0.6 * np.clip((0.011 - d) / 0.004, 0.0, 1.0)
        # lead wire: a quadratic curve from the snap out through the top or a side of the field
        start = np.array([r, c])
        end = np.array([-0.1 * size, (0.5 + 0.6 * bend[0]) * size]) if bend[1] > -0.3 else \
            np.array([(0.3 + 0.3 * bend[2]) * size, -0.1 * size if bend[3] < 0 else 1.1 * size])
        ctrl = (start + end) / 2.0 + bend[2:] * 0.25 * size
        t = np.linspace(0.0, 1.0, 4 * size)[:, None]
        curve = (1 - t) ** 2 * start + 2 * t * (1 - t) * ctrl + t**2 * end
        step = np.linalg.norm(np.diff(curve, axis=0), axis=1).mean()
        out += blur(deposit(curve[:, 0], curve[:, 1], np.full(len(curve), 0.35 * step * size / 256), size), 0.6)
    if acq.marker is not None:
        letter, corner = acq.marker
        bitmap = np.array([[ch == "1" for ch in line] for line in _LETTERS[letter]], np.float32)
        cell = max(1, round(size * 0.011))
        glyph = np.kron(bitmap, np.ones((cell, cell), np.float32))
        top, left = round(0.05 * size), round(0.06 * size) if corner == 0 else size - round(0.06 * size) - glyph.shape[1]
        out[top : top + glyph.shape[0], left : left + glyph.shape[1]] += 2.5 * glyph
    return out


def expose(line_integral: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Detected log signal ``-log(counts / n0)`` (``H x W`` float32) of a line-integral image."""
    size = line_integral.shape[0]
    n0 = acq.n0 * (256.0 / size) ** 2
    primary = n0 * np.exp(-acq.k * line_integral)
    counts = primary + acq.scatter * blur(primary, 0.12 * size)
    counts = counts + np.sqrt(counts) * rng.standard_normal(counts.shape).astype(np.float32)
    counts = blur(np.maximum(counts, 0.5), acq.blur * size / 256.0)
    return (-np.log(np.maximum(counts, 0.5) / n0)).astype(np.float32)


def process(signal: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Vendor-like display image in ``[0, 1]`` (bright = dense): two-band unsharp mask, percentile window,
    S-curve lookup table."""
    size = signal.shape[0]
    g1, s1, g2, s2 = acq.enhance
    f = size / 256.0
    enhanced = signal + g1 * (signal - blur(signal, s1 * f)) + g2 * (signal - blur(signal, s2 * f))
    low, high = np.percentile(enhanced, acq.window)
    x = np.clip((enhanced - low) / max(high - low, 1e-6), 0.0, 1.0)
    slope, centre = acq.curve

    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-slope * (v - centre)))

    y = (sigmoid(x) - sigmoid(0.0)) / (sigmoid(1.0) - sigmoid(0.0))
    return np.clip(y, 0.0, 1.0).astype(np.float32)
