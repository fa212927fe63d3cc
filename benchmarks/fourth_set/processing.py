"""Vendor processing of the fourth set: detected signal -> displayed image (bright = dense).

The log signal ``y = -log(signal)`` is processed inside the collimated field by one of two vendor styles:

- ``multiscale`` (55 %): multiscale contrast equalisation: a five-band difference-of-Gaussians pyramid (sigma
  1-16 px at 256 px), each band compressed as ``m sign(b) |b / m|^p`` (``m`` its std in the field, ``p``
  0.7-0.9, so weak detail is amplified and large swings flattened), the two finest bands boosted by 1.1-1.4,
  the coarse residual attenuated to 0.6-0.85 (dynamic-range compression);
- ``equalise`` (45 %): a histogram-equalisation lookup table (the in-field cumulative histogram) blended
  with a linear one (weight 0.2-0.5), after an unsharp mask (gain 0.3-0.8 at 2 px).

Then a percentile window over the field and a gamma; outside the field the image is white (unexposed,
60 %) or black-masked; burned-in text (view and time) in one corner, white.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from .acquisition import Acquisition, field_mask

__all__ = ["process"]


def _multiscale(y: np.ndarray, field: np.ndarray, px: float, strength: tuple[float, float, float]) -> np.ndarray:
    power, fine_gain, residual = strength
    levels = [y] + [gaussian_filter(y, s * px) for s in (1, 2, 4, 8, 16)]
    out = residual * levels[-1]
    for i in range(5):
        band = levels[i] - levels[i + 1]
        m = max(float(band[field].std()), 1e-6)
        out += (fine_gain if i < 2 else 1.0) * m * np.sign(band) * np.abs(band / m) ** power
    return out


def _equalise(y: np.ndarray, field: np.ndarray, px: float, strength: tuple[float, float, float]) -> np.ndarray:
    weight, sharpen, _ = strength
    y = y + sharpen * (y - gaussian_filter(y, 2 * px))
    low, high = np.percentile(y[field], (0.5, 99.5))
    edges = np.linspace(low, high, 257)
    cdf = np.cumsum(np.histogram(np.clip(y[field], low, high), edges)[0]).astype(np.float64)
    lut = weight * cdf / cdf[-1] + (1 - weight) * np.linspace(0, 1, 256)
    return np.interp(y, 0.5 * (edges[1:] + edges[:-1]), lut)


def _burn_in(image: np.ndarray, text: str, corner: int) -> np.ndarray:
    size = image.shape[0]
    font = ImageFont.load_default(size=max(6, size // 22))
    layer = Image.new("L", (size, size))
    draw = ImageDraw.Draw(layer)
    box = draw.textbbox((0, 0), text, font=font)
    x = size // 40 if corner % 2 == 0 else size - size // 40 - (box[2] - box[0])
    y = size // 40 if corner < 2 else size - size // 40 - (box[3] - box[1]) - box[1]
    draw.text((x, y), text, fill=255, font=font)
    return np.maximum(image, np.asarray(layer, dtype=np.float32) / 255.0)


def process(signal: np.ndarray, acquisition: Acquisition) -> np.ndarray:
    """Displayed image ``size x size`` float32 in [0, 1] of a detected ``signal`` (module docstring)."""
    size = signal.shape[0]
    px = size / 256.0
    field = field_mask(acquisition, size)
    y = -np.log(signal)
    style = _multiscale if acquisition.processing == "multiscale" else _equalise
    z = style(y, field, px, acquisition.strength)
    low, high = np.percentile(z[field], acquisition.window)
    image = np.clip((z - low) / max(high - low, 1e-6), 0.0, 1.0) ** acquisition.gamma
    image = np.where(field, image, 1.0 if acquisition.shutter_white else 0.0)
    if acquisition.label:
        image = _burn_in(image, acquisition.label, acquisition.corner)
    return image.astype(np.float32)
