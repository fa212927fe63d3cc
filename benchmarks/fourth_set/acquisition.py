"""Exposure and detector of the fourth set: a CR plate or a DR flat panel, each with its own artefacts.

- exposure: counts ``n0 exp(-k A)`` (``k`` 2.2-2.8, ``n0`` 15000-50000 photons per pixel at 256 px, halved
  for the largest habitus) with a heel-effect gradient and collimation (20 %: a field rotated up to 2 degrees,
  margins up to 5 %; outside it only a little scatter arrives); scatter is a broad blur of the primary, more
  for a large habitus;
- noise: quantum noise filtered by the detector's blur (it arises before the spread in the phosphor) plus
  additive electronic noise; the CR plate adds a fixed plate-structure pattern;
- CR artefacts (45 %): scanner row-gain jitter (correlated along the slow-scan direction), dust specks and
  sometimes a scratch (less light read out: they appear dense);
- DR artefacts (55 %): the shadow of a stationary anti-scatter grid (stripes of 2.2-3.4 px period, near the
  Nyquist limit) and, in half, a gain seam between the panel's two read-out halves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter, gaussian_filter1d

__all__ = ["Acquisition", "sample_acquisition", "field_mask", "expose"]


@dataclass(frozen=True)
class Acquisition:
    """One exposure. Lengths in pixels at 256 px. ``detector`` "CR" or "DR"; ``k`` attenuation per soft unit;
    ``n0`` photons per pixel; ``scatter`` fraction; ``heel`` relative gradient top to bottom; ``blur`` sigma;
    ``electronic`` noise (fraction of the open-field signal); ``artefact``: CR row jitter or DR grid amplitude;
    ``period`` of the DR grid; ``seam`` DR gain step (0 none); ``dust`` CR specks; ``scratch`` CR (bool);
    ``field``: shutter margins (left, right, top, bottom, fractions) and ``field_angle`` (radians);
    ``processing`` ("multiscale" or "equalise") and its ``strength`` triple; ``window`` percentiles; ``gamma``;
    ``shutter_white`` (outside the field white, else black); ``label`` burned-in text or None with its
    ``corner``; ``noise_seed``."""

    detector: str
    k: float
    n0: float
    scatter: float
    heel: float
    blur: float
    electronic: float
    artefact: float
    period: float
    seam: float
    dust: int
    scratch: bool
    field: tuple[float, float, float, float]
    field_angle: float
    processing: str
    strength: tuple[float, float, float]
    window: tuple[float, float]
    gamma: float
    shutter_white: bool
    label: str | None
    corner: int
    noise_seed: int


_VIEWS = ("AP PORTABLE", "PA ERECT", "AP SUPINE", "SEMI-ERECT", "AP SITTING", "PA")


def sample_acquisition(rng: np.random.Generator, habitus: float) -> Acquisition:
    """Draw one exposure for a patient of ``habitus`` (0 adolescent .. 1 large adult)."""
    cr = rng.uniform() < 0.45
    collimated = rng.uniform() < 0.2
    multiscale = rng.uniform() < 0.55
    labelled = rng.uniform() < 0.6
    view = _VIEWS[int(rng.integers(len(_VIEWS)))]
    clock = f"{int(rng.integers(24)):02d}:{int(rng.integers(60)):02d}"
    return Acquisition(
        detector="CR" if cr else "DR",
        k=float(rng.uniform(2.2, 2.8)),
        n0=float(rng.uniform(15000, 50000) * (1.0 - 0.5 * habitus)),
        scatter=float(rng.uniform(0.08, 0.2) + 0.2 * habitus),
        heel=float(rng.uniform(-0.1, 0.1)),
        blur=float(rng.uniform(0.8, 1.4) if cr else rng.uniform(0.4, 0.8)),
        electronic=float(rng.uniform(0.002, 0.006)),
        artefact=float(rng.uniform(0.004, 0.012) if cr else rng.uniform(0.01, 0.03)),
        period=float(rng.uniform(2.2, 3.4)),
        seam=float(rng.uniform(0.005, 0.02)) if (not cr and rng.uniform() < 0.5) else 0.0,
        dust=int(rng.integers(0, 5)) if cr else 0,
        scratch=bool(cr and rng.uniform() < 0.25),
        field=tuple(float(x) for x in rng.uniform(0.0, 0.05, 4)) if collimated else (0.0, 0.0, 0.0, 0.0),
        field_angle=float(np.deg2rad(rng.uniform(-2.0, 2.0))) if collimated else 0.0,
        processing="multiscale" if multiscale else "equalise",
        strength=(float(rng.uniform(0.7, 0.9)), float(rng.uniform(1.1, 1.4)), float(rng.uniform(0.6, 0.85)))
        if multiscale else (float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.3, 0.8)), 0.0),
        window=(float(rng.uniform(0.3, 1.5)), float(rng.uniform(98.5, 99.7))),
        gamma=float(rng.uniform(0.8, 1.2)),
        shutter_white=bool(rng.uniform() < 0.6),
        label=f"{view}  {clock}" if labelled else None,
        corner=int(rng.integers(4)),
        noise_seed=int(rng.integers(2**31)),
    )


def field_mask(acquisition: Acquisition, size: int) -> np.ndarray:
    """Boolean ``size x size``: inside the collimated (rotated rectangular) field."""
    left, right, top, bottom = acquisition.field
    corners = np.array([(left, top), (1 - right, top), (1 - right, 1 - bottom), (left, 1 - bottom)]) - 0.5
    c, s = np.cos(acquisition.field_angle), np.sin(acquisition.field_angle)
    rotated = corners @ np.array([[c, s], [-s, c]]) + 0.5
    image = Image.new("1", (size, size))
    ImageDraw.Draw(image).polygon([tuple(p * size) for p in rotated], fill=1)
    return np.asarray(image, dtype=bool)


def expose(line_integral: np.ndarray, acquisition: Acquisition) -> np.ndarray:
    """Detected signal (``size x size`` float32, open field about 1) of a line integral ``size x size``."""
    size = line_integral.shape[0]
    px = size / 256.0
    rng = np.random.default_rng(acquisition.noise_seed)
    rows = np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None]
    primary = np.exp(-acquisition.k * line_integral) * (1.0 + acquisition.heel * rows)
    primary *= np.where(field_mask(acquisition, size), 1.0, 0.02)
    signal = (1.0 - acquisition.scatter) * primary + acquisition.scatter * gaussian_filter(primary, 20 * px)
    quantum = rng.standard_normal(signal.shape) * np.sqrt(signal / (acquisition.n0 / px**2))
    blur = acquisition.blur * px
    detected = gaussian_filter(signal, blur) + gaussian_filter(quantum, blur) * (1 + blur) ** 0.5
    detected += acquisition.electronic * rng.standard_normal(signal.shape)
    if acquisition.detector == "CR":
        plate = gaussian_filter(rng.standard_normal(signal.shape), 1.5 * px)
        jitter = gaussian_filter1d(rng.standard_normal(size), 2.0 * px)
        detected *= 1.0 + 0.02 * plate / max(float(plate.std()), 1e-9) + acquisition.artefact * jitter[:, None] / max(
            float(jitter.std()), 1e-9)
        detected *= _plate_defects(rng, size, acquisition)
    else:
        x = np.arange(size, dtype=np.float32) / px
        detected *= 1.0 + acquisition.artefact * np.cos(2 * np.pi * x / acquisition.period)[None, :]
        if acquisition.seam:
            detected[:, size // 2:] *= 1.0 + acquisition.seam
    return np.clip(detected, 1e-4, None).astype(np.float32)


def _plate_defects(rng: np.random.Generator, size: int, acquisition: Acquisition) -> np.ndarray:
    """Multiplicative ``size x size`` gain of CR dust specks and a scratch (1 elsewhere)."""
    image = Image.new("F", (size, size), 1.0)
    draw = ImageDraw.Draw(image)
    for x, y, r in zip(*rng.uniform(0, 1, (2, acquisition.dust)) * size, rng.uniform(0.6, 1.6, acquisition.dust)):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=0.55)
    if acquisition.scratch:
        a, b = rng.uniform(0, 1, (2, 2)) * size
        draw.line((tuple(a), tuple(b)), fill=0.8, width=1)
    return np.asarray(image, dtype=np.float32)
