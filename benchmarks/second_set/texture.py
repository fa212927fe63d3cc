"""Lung texture of the second synthetic set: branching vessel trees and power-law parenchymal noise.

Vessels grow as a random binary tree from each hilum (segment length and width shrinking by a constant
factor per generation, branch angles drawn per split), drawn with Pillow at twice the resolution, blurred
and faded with the distance from the hilum, so markings are thick centrally and vanish towards the
periphery. The parenchyma is ``1/f**beta`` noise synthesised in the Fourier domain.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .anatomy import Anatomy, Grid

__all__ = ["gaussian_blur", "power_noise", "vessel_trees", "branch_segments"]


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (periodic boundary, via the FFT) of an ``H x W`` array with ``sigma`` in pixels."""
    if sigma <= 0:
        return image.astype(np.float32)
    h, w = image.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(image) * kernel, s=(h, w)).astype(np.float32)


def power_noise(rng: np.random.Generator, size: int, beta: float, low_cut: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-std ``size x size`` noise with power spectrum ``1 / f**beta`` (``f`` in cycles per image,
    frequencies below ``low_cut`` removed)."""
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]) * size
    amplitude = np.where(f >= low_cut, np.maximum(f, 1.0) ** (-beta / 2.0), 0.0)
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) * amplitude
    noise = np.fft.irfft2(spectrum, s=(size, size))
    return ((noise - noise.mean()) / max(float(noise.std()), 1e-12)).astype(np.float32)


def branch_segments(
    rng: np.random.Generator, origin: tuple[float, float], angle: float, length: float, width: float, depth: int
) -> list[tuple[float, float, float, float, float]]:
    """Segments ``(u0, v0, u1, v1, width)`` of a random binary tree grown from ``origin`` along ``angle``."""
    segments = []
    stack = [(origin[0], origin[1], angle, length, width, depth)]
    while stack:
        u0, v0, ang, ln, wd, d = stack.pop()
        bend = ang + rng.normal(0.0, 0.15)
        u1, v1 = u0 + ln * np.cos(bend), v0 + ln * np.sin(bend)
        segments.append((u0, v0, u1, v1, wd))
        if d > 0:
            spread = rng.uniform(0.3, 0.6)
            for sign in (-1.0, 1.0):
                stack.append((u1, v1, bend + sign * spread, ln * rng.uniform(0.68, 0.82), wd * 0.72, d - 1))
    return segments


def vessel_trees(a: Anatomy, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Vascular markings (``H x W`` float32, about [0, 1]) from both hila, fading to the periphery."""
    factor = 2
    canvas = Image.new("L", (grid.size * factor, grid.size * factor), 0)
    draw = ImageDraw.Draw(canvas)
    px_per_unit = grid.size * factor * a.scale / 2.0
    hila = []
    for side in (-1, 1):
        hilum = (side * (a.mediastinum + 0.09), -0.12 + rng.uniform(-0.03, 0.03))
        hila.append(hilum)
        for base in (-70.0, -25.0, 15.0, 55.0, 95.0):
            direction = np.deg2rad(base + rng.uniform(-12.0, 12.0))
            angle = direction if side > 0 else np.pi - direction
            for u0, v0, u1, v1, wd in branch_segments(rng, hilum, angle, 0.13, 0.022, 5):
                ends = grid.to_pixels(np.array([[u0, v0], [u1, v1]]), factor)
                draw.line([tuple(ends[0]), tuple(ends[1])], fill=255, width=max(1, round(wd * px_per_unit)))
    blurred = canvas.filter(ImageFilter.GaussianBlur(radius=factor * 0.8))
    small = np.asarray(blurred.resize((grid.size, grid.size), Image.BOX), dtype=np.float32) / 255.0
    distance = np.minimum(*[np.hypot(grid.u - h[0], grid.v - h[1]) for h in hila])
    return (small * np.exp(-distance / 0.45)).astype(np.float32)
