"""3-D pulmonary vessel trees of the third set and the analytic projection of thin tubes.

Trees grow from both hila in 3-D (random branch directions, segment length and radius shrinking per
generation); a branch stops where it would leave the lung. A tube of radius ``r`` and attenuation contrast
``c`` (relative to what it displaces) adds ``pi r**2 c`` (units**3) per unit length; :func:`splat_tubes`
deposits that along the projected centre line (bilinear splats) and blurs it by the projected radius, so the
projection of many thin tubes costs a few thousand points instead of a voxel grid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks.second_set.texture import gaussian_blur

from .geometry import Geometry, project_points

__all__ = ["vessel_segments", "splat_tubes", "deposit"]

_BINS = (0.5, 0.9, 1.5, 2.5)  # blur sigmas (pixels) the tubes are grouped into


def vessel_segments(
    rng: np.random.Generator, hila: list[np.ndarray], inside: Callable[[np.ndarray], np.ndarray],
    generations: int = 6, length: float = 0.12, radius: float = 0.02,
) -> np.ndarray:
    """Segments ``(K, 7)``: start xyz, end xyz, radius (units) of trees from ``hila``; ``inside(points (N, 3))``
    says which points lie in the lung (bool ``(N,)``). Grown one generation at a time (vectorised)."""
    starts, directions = [], []
    for hilum in hila:
        side = np.sign(hilum[0])
        for _ in range(8):
            d = np.array([side * rng.uniform(0.2, 1.0), rng.uniform(-0.6, 0.6), rng.uniform(-1.0, 1.0)])
            starts.append(hilum)
            directions.append(d / np.linalg.norm(d))
    tips, heads = np.array(starts), np.array(directions)
    out = []
    for generation in range(generations):
        step = length * 0.8**generation * rng.uniform(0.8, 1.2, (len(tips), 1))
        ends = tips + heads * step
        keep = inside(ends) if generation > 0 else np.ones(len(tips), bool)
        r = radius * 0.75**generation
        out.append(np.column_stack([tips[keep], ends[keep], np.full(keep.sum(), r)]))
        tips, heads = ends[keep], heads[keep]
        if not len(tips):
            break
        children = []
        for sign in (-1.0, 1.0):
            turn = rng.normal(0.0, 1.0, heads.shape)
            turn -= (turn * heads).sum(1, keepdims=True) * heads  # perpendicular to the parent
            turn /= np.maximum(np.linalg.norm(turn, axis=1, keepdims=True), 1e-9)
            angle = rng.uniform(0.25, 0.6, (len(heads), 1)) * sign
            children.append(heads * np.cos(angle) + turn * np.sin(np.abs(angle)))
        tips = np.concatenate([tips, tips])
        heads = np.concatenate(children)
    return np.concatenate(out) if out else np.zeros((0, 7))


def splat_tubes(g: Geometry, segments: np.ndarray, contrast: np.ndarray | float, size: int) -> np.ndarray:
    """Line integral (units, ``size x size`` float32) of tubes ``(K, 7)`` with attenuation contrast ``contrast``
    (scalar or ``(K,)``, relative to soft tissue = 1)."""
    out = np.zeros((size, size), np.float32)
    if not len(segments):
        return out
    pixel = 2.0 * g.half_field / size  # detector units per pixel
    lengths = np.linalg.norm(segments[:, 3:6] - segments[:, :3], axis=1)
    counts = np.maximum(2, np.ceil(lengths / (0.5 * pixel)).astype(int))
    which = np.repeat(np.arange(len(segments)), counts)
    t = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 0.5) / np.repeat(counts, counts)
    points = segments[which, :3] + t[:, None] * (segments[which, 3:6] - segments[which, :3])
    row, col, magnification = project_points(g, points, size)
    r = segments[which, 6]
    weight = np.pi * r**2 * np.broadcast_to(np.asarray(contrast, np.float64), (len(segments),))[which]
    weight = weight * (lengths / counts)[which] * magnification**2 / pixel**2
    sigma = 0.6 * r * magnification / pixel
    group = np.digitize(sigma, [(a + b) / 2 for a, b in zip(_BINS[:-1], _BINS[1:])])
    for g_index, s in enumerate(_BINS):
        sel = group == g_index
        if sel.any():
            out += gaussian_blur(deposit(row[sel], col[sel], weight[sel], size), s)
    return out


def deposit(row: np.ndarray, col: np.ndarray, weight: np.ndarray, size: int) -> np.ndarray:
    """Deposit ``weight`` at continuous pixel positions (pixel ``i`` spans ``[i, i + 1)``), bilinearly."""
    r, c = row - 0.5, col - 0.5
    r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
    fr, fc = r - r0, c - c0
    grid = np.zeros(size * size, np.float64)
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        grid += np.bincount(rr[ok] * size + cc[ok], weights=(weight * w)[ok], minlength=size * size)
    return grid.reshape(size, size).astype(np.float32)
