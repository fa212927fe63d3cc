"""Beam geometry of the third set: where each ray sample lies in the patient, and where a patient point projects.

Units: one "unit" is about 17 cm (the half-width of an adult rib cage is 0.7-0.9 units). Patient coordinates
``x`` (towards the patient's left = image right), ``y`` (anterior), ``z`` (up). The detector is a plane
``y = +gap`` (PA: the patient faces the detector) or ``y = -gap`` (AP: the back lies on the detector); the
point source is ``sid`` units from it, on the central ray. A point at distance ``h`` from the detector is
magnified by ``sid / (sid - h)``, so anterior structures (the heart) are magnified more in AP than in PA.
The patient is turned by ``rotation`` radians about the vertical axis and shifted by ``shift`` (x, z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Geometry", "ray_samples", "project_points", "DEPTH_HALF"]

DEPTH_HALF = 0.9  # ray samples cover |y| <= DEPTH_HALF units (the body and breasts lie within)


@dataclass(frozen=True)
class Geometry:
    """Projection geometry: view ``"PA"``/``"AP"``, source-detector distance ``sid`` and detector offset ``gap``
    (units), half field of view ``half_field`` at the detector (units), ``rotation`` (radians about z),
    ``shift`` (x, z) of the patient in units."""

    view: str
    sid: float
    gap: float
    half_field: float
    rotation: float
    shift: tuple[float, float]

    def distance_to_detector(self, y: np.ndarray) -> np.ndarray:
        """Distance (units) from the detector plane of world depth ``y``."""
        return (self.gap - y) if self.view == "PA" else (y + self.gap)


def ray_samples(g: Geometry, n: int, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Patient coordinates of ``depth`` samples along each of the ``n x n`` rays of the detector.

    Returns ``(x, y, z, step)``: float32 arrays of shape ``(n, n, depth)`` (row = detector row from the top,
    column = detector column, last axis along the beam) and the sample spacing ``step`` in units along ``y``.
    """
    centres = ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0) * g.half_field
    yw = np.linspace(-DEPTH_HALF, DEPTH_HALF, depth, dtype=np.float32)
    scale = ((g.sid - g.distance_to_detector(yw)) / g.sid).astype(np.float32)  # world / detector coordinates
    xw = centres[None, :, None] * scale[None, None, :] - g.shift[0]
    zw = centres[::-1, None, None] * scale[None, None, :] - g.shift[1]
    c, s = np.float32(np.cos(g.rotation)), np.float32(np.sin(g.rotation))
    x = c * xw + s * yw[None, None, :]
    y = -s * xw + c * yw[None, None, :]
    x, y, zw = np.broadcast_arrays(x, y, zw)
    return x.astype(np.float32), y.astype(np.float32), np.ascontiguousarray(zw, dtype=np.float32), float(yw[1] - yw[0])


def project_points(g: Geometry, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector position of patient points ``(..., 3)`` on a ``size x size`` image: ``(row, col, magnification)``,
    row and column in pixels (pixel ``i`` spans ``[i, i + 1)``), magnification dimensionless."""
    c, s = np.cos(g.rotation), np.sin(g.rotation)
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    xw = c * x - s * y + g.shift[0]
    yw = s * x + c * y
    zw = z + g.shift[1]
    magnification = g.sid / (g.sid - g.distance_to_detector(yw))
    u, v = xw * magnification, zw * magnification
    col = (u / g.half_field + 1.0) * 0.5 * size
    row = (1.0 - v / g.half_field) * 0.5 * size
    return row, col, magnification
