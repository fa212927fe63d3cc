"""Statistical shape model of the thorax: landmark sets, principal modes of variation, splines through them.

A thorax is 50 landmarks ``(u, v)`` in the patient frame (``u`` to the image right, the patient's left; ``v``
downwards; about ``[-1, 1]`` across the inner rib cage): the right lung (16, from the apex round the lateral
wall, the costophrenic angle, the dome and the medial border), the left lung (16), the cardiac silhouette (10)
and the upper mediastinum with the aortic knob (8). A shape is ``mean + sum_k b_k sqrt(lambda_k) phi_k`` with
``b_k ~ N(0, 1)`` truncated to +-2.5, over orthonormal modes ``phi_k`` (``50 x 2`` each): eight anatomical
modes (thoracic width, inspiration depth, apex height, dome asymmetry, mediastinal width, heart lie,
costophrenic depth, lateral-wall convexity) and six smooth per-contour modes (2nd/3rd Fourier harmonics along
each contour's normal), orthonormalised in that order as a principal-component basis would be. Outlines are
periodic Catmull-Rom splines through the landmarks (:func:`closed_spline`); open curves (ribs, tubes) use
:func:`open_spline`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PARTS", "MEAN_SHAPE", "MODES", "MODE_STD", "sample_shape", "closed_spline", "open_spline", "normals"]

_RIGHT_LUNG = np.array([
    (-0.40, -0.92), (-0.62, -0.80), (-0.80, -0.55), (-0.90, -0.22), (-0.95, 0.12), (-0.97, 0.42), (-0.95, 0.70),
    (-0.80, 0.60), (-0.56, 0.46), (-0.34, 0.48), (-0.15, 0.58), (-0.12, 0.30), (-0.12, 0.00), (-0.13, -0.35),
    (-0.17, -0.65), (-0.26, -0.85)])
_LEFT_LUNG = _RIGHT_LUNG * (-1.0, 1.0) + np.where(_RIGHT_LUNG[:, 1:] > 0.4, 0.04, 0.0) * (0.0, 1.0)
_HEART = np.array([
    (-0.06, -0.10), (-0.17, 0.05), (-0.23, 0.25), (-0.20, 0.45), (-0.05, 0.58), (0.20, 0.62), (0.42, 0.52),
    (0.47, 0.32), (0.36, 0.10), (0.16, -0.06)])
_MEDIASTINUM = np.array([
    (-0.11, -1.10), (0.11, -1.10), (0.13, -0.60), (0.24, -0.42), (0.19, -0.24), (0.12, 0.05), (-0.12, 0.05),
    (-0.15, -0.40)])

PARTS: dict[str, slice] = {
    "lung_right": slice(0, 16), "lung_left": slice(16, 32), "heart": slice(32, 42), "mediastinum": slice(42, 50)}
MEAN_SHAPE: np.ndarray = np.concatenate([_RIGHT_LUNG, _LEFT_LUNG, _HEART, _MEDIASTINUM]).astype(np.float64)


def closed_spline(points: np.ndarray, samples: int = 10) -> np.ndarray:
    """Periodic Catmull-Rom spline through ``points`` (``N x 2``): ``(N * samples) x 2`` points."""
    p0, p1, p2, p3 = (np.roll(points, s, axis=0) for s in (1, 0, -1, -2))
    t = (np.arange(samples) / samples)[None, :, None]
    curve = 0.5 * (2 * p1[:, None] + (p2 - p0)[:, None] * t + (2 * p0 - 5 * p1 + 4 * p2 - p3)[:, None] * t**2
                   + (3 * p1 - p0 - 3 * p2 + p3)[:, None] * t**3)
    return curve.reshape(-1, 2)


def open_spline(points: np.ndarray, samples: int = 10) -> np.ndarray:
    """Catmull-Rom spline through ``points`` (``N x 2``, ends repeated): ``((N - 1) * samples + 1) x 2``."""
    padded = np.concatenate([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    p0, p1, p2, p3 = padded[:-3], padded[1:-2], padded[2:-1], padded[3:]
    t = (np.arange(samples) / samples)[None, :, None]
    curve = 0.5 * (2 * p1[:, None] + (p2 - p0)[:, None] * t + (2 * p0 - 5 * p1 + 4 * p2 - p3)[:, None] * t**2
                   + (3 * p1 - p0 - 3 * p2 + p3)[:, None] * t**3)
    return np.concatenate([curve.reshape(-1, 2), points[-1:]])


def normals(curve: np.ndarray, closed: bool = True) -> np.ndarray:
    """Unit normals (``N x 2``) of a polyline ``N x 2`` (the tangent turned by +90 degrees)."""
    tangent = (np.roll(curve, -1, 0) - np.roll(curve, 1, 0)) if closed else np.gradient(curve, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def _anatomical_modes(mean: np.ndarray) -> list[np.ndarray]:
    u, v = mean[:, 0], mean[:, 1]
    lung = np.zeros(len(mean), bool)
    lung[:32] = True
    heart = np.zeros(len(mean), bool)
    heart[PARTS["heart"]] = True
    centre = mean[heart].mean(axis=0)
    zero = np.zeros_like(u)
    right_base = np.arange(len(mean)) < 16
    return [
        np.stack([u, zero], 1),  # thoracic width
        np.stack([zero, np.clip(v, 0, None) * (lung | heart)], 1),  # inspiration depth: bases descend
        np.stack([zero, -np.clip(-v - 0.5, 0, None) * lung], 1),  # apex height
        np.stack([zero, -(right_base & (v > 0.3)).astype(float)], 1),  # right dome higher than the left
        np.stack([np.sign(u) * np.clip(0.35 - np.abs(u), 0, None) * ~heart, zero], 1),  # mediastinal width
        np.stack([-(v - centre[1]) * heart, (u - centre[0]) * heart], 1),  # heart lie (rotation)
        np.stack([zero, (lung & (np.abs(u) > 0.85) & (v > 0.5)).astype(float)], 1),  # costophrenic depth
        np.stack([np.sign(u) * np.exp(-(v - 0.1) ** 2 / 0.15) * lung * (np.abs(u) > 0.6), zero], 1),  # wall
    ]


def _contour_modes(mean: np.ndarray) -> list[np.ndarray]:
    modes = []
    for name in ("lung_right", "lung_left", "heart"):
        part = PARTS[name]
        n = part.stop - part.start
        outward = normals(mean[part])
        for harmonic, phase in ((2, 0.0), (3, 0.7)):
            mode = np.zeros_like(mean)
            mode[part] = outward * np.cos(2 * np.pi * harmonic * np.arange(n) / n + phase)[:, None]
            modes.append(mode)
    return modes


def _orthonormal(modes: list[np.ndarray]) -> np.ndarray:
    q, _ = np.linalg.qr(np.stack([m.ravel() for m in modes], axis=1))
    signs = np.sign(np.einsum("ik,ik->k", q, np.stack([m.ravel() for m in modes], axis=1)))
    return (q * signs).T.reshape(len(modes), *MEAN_SHAPE.shape)


MODES: np.ndarray = _orthonormal(_anatomical_modes(MEAN_SHAPE) + _contour_modes(MEAN_SHAPE))
MODE_STD: np.ndarray = np.array([0.21, 0.18, 0.14, 0.10, 0.10, 0.11, 0.08, 0.10] + [0.04] * 6)


def sample_shape(rng: np.random.Generator) -> np.ndarray:
    """One thorax from the model: landmarks ``50 x 2`` (slices in :data:`PARTS`)."""
    b = np.clip(rng.standard_normal(len(MODES)), -2.5, 2.5)
    return MEAN_SHAPE + np.einsum("k,kij->ij", b * MODE_STD, MODES)
