"""Rasterising patient-frame shapes: polygons and polylines drawn by Pillow at twice the size, averaged down.

A :class:`Canvas` maps patient points to pixels (:func:`.anatomy.to_pixels`) and draws on a float image of
``2 size x 2 size`` pixels; :meth:`Canvas.array` returns it averaged over 2 x 2 blocks (``size x size``
float32), so edges are anti-aliased. Drawing overwrites: callers layer thin before thick, or use one canvas
per overlapping set of shapes and add the arrays.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .anatomy import Patient, to_pixels

__all__ = ["Canvas", "pixel_to_patient"]

SUPER = 2


class Canvas:
    """A ``size x size`` float layer of ``patient``, drawn at ``SUPER`` times the resolution."""

    def __init__(self, patient: Patient, size: int) -> None:
        self.patient, self.size = patient, size
        self.image = Image.new("F", (SUPER * size, SUPER * size), 0.0)
        self.draw = ImageDraw.Draw(self.image)
        self.pixels_per_unit = 0.5 * SUPER * size * patient.scale

    def _xy(self, points: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in to_pixels(points, self.patient, SUPER * self.size)]

    def polygon(self, points: np.ndarray, value: float) -> None:
        """Fill the closed polygon ``N x 2`` (patient frame) with ``value``."""
        self.draw.polygon(self._xy(points), fill=float(value))

    def line(self, points: np.ndarray, width: float, value: float, closed: bool = False) -> None:
        """Draw the polyline ``N x 2`` (patient frame) ``width`` patient units wide (at least one fine pixel)."""
        if closed:
            points = np.concatenate([points, points[:1]])
        pixels = max(1, int(round(width * self.pixels_per_unit)))
        self.draw.line(self._xy(points), fill=float(value), width=pixels, joint="curve")

    def array(self) -> np.ndarray:
        """The layer as ``size x size`` float32 (mean of each ``SUPER x SUPER`` block)."""
        data = np.asarray(self.image, dtype=np.float32)
        return data.reshape(self.size, SUPER, self.size, SUPER).mean(axis=(1, 3))


def pixel_to_patient(patient: Patient, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates ``(u, v)`` (each ``size x size`` float32) of the pixel centres."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    half = 0.5 * size * patient.scale
    dx, dy = (x - patient.centre[0] * size) / half, (y - patient.centre[1] * size) / half
    c, s = np.cos(patient.angle), np.sin(patient.angle)
    return (c * dx + s * dy).astype(np.float32), (-s * dx + c * dy).astype(np.float32)
