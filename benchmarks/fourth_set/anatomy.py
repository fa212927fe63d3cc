"""One patient of the fourth set: a thorax from the shape model, habitus, ribs, placement in the image.

Habitus ``h`` in ``[0, 1]`` runs from an adolescent (small, narrow thorax, thin soft tissue and ribs) to a
large adult (wide, deep, more soft tissue outside the rib cage); it scales the thorax in the field, the body
depth, the subcutaneous margin and the rib width. The heart of the shape-model sample is scaled about its
centre to a cardiothoracic ratio drawn in :data:`NORMAL_CTR` (widest heart width over the widest inner thoracic
width). Ribs are explicit curves: each posterior rib leaves the spine, rises a little and arcs down the
lateral wall; each anterior rib runs from the lateral wall down-medially to the costochondral junction. A
lordotic/kyphotic ``tilt`` moves the clavicles and anterior ribs against the posterior ribs, and in-plane
rotation and shift place the patient (:func:`to_pixels`). :func:`patient_grid` rasterises the lungs and heart
on a fixed patient-frame grid, where vessel growth and finding placement happen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .shape_model import PARTS, closed_spline, open_spline, sample_shape

__all__ = ["NORMAL_CTR", "GRID", "Patient", "sample_patient", "to_pixels", "outline", "cardiothoracic_ratio",
           "with_ctr", "rib_curves", "body_outline", "patient_grid", "grid_to_patient"]

NORMAL_CTR: tuple[float, float] = (0.40, 0.50)
GRID = 96  # patient-frame grid (cells per side over [-1.2, 1.2]) for growth and placement


@dataclass(frozen=True)
class Patient:
    """``shape``: landmarks ``50 x 2`` (patient frame); ``habitus`` in [0, 1]; ``scale``: image half-widths per
    patient unit; ``centre``: ``(x, y)`` of the patient origin as fractions of the image; ``angle`` (radians,
    in-plane); ``tilt`` (lordotic > 0); ``rib_top``, ``rib_step``, ``rib_width`` (patient units); ``depth``:
    body depth in soft-tissue units; ``margin``: soft tissue outside the ribs; ``bubble``: gastric bubble
    ``(u, v, radius)`` or radius 0; ``seed``: vessels, texture and spine details."""

    shape: np.ndarray
    habitus: float
    scale: float
    centre: tuple[float, float]
    angle: float
    tilt: float
    rib_top: float
    rib_step: float
    rib_width: float
    depth: float
    margin: float
    bubble: tuple[float, float, float]
    seed: int


def outline(patient: Patient, part: str, samples: int = 10) -> np.ndarray:
    """Closed spline (``M x 2``, patient frame) through the landmarks of ``part`` (a key of ``PARTS``)."""
    return closed_spline(patient.shape[PARTS[part]], samples)


def cardiothoracic_ratio(shape: np.ndarray) -> float:
    """Widest heart width over the widest inner thoracic width (lateral lung borders) of landmarks ``50 x 2``."""
    heart = closed_spline(shape[PARTS["heart"]])[:, 0]
    right, left = closed_spline(shape[PARTS["lung_right"]])[:, 0], closed_spline(shape[PARTS["lung_left"]])[:, 0]
    return float((heart.max() - heart.min()) / (left.max() - right.min()))


def with_ctr(shape: np.ndarray, ctr: float) -> np.ndarray:
    """``shape`` with the heart scaled about its centre (horizontally fully, vertically by a third as much) to
    cardiothoracic ratio ``ctr``; the heart keeps its base on the diaphragm (its lowest point)."""
    factor = ctr / cardiothoracic_ratio(shape)
    heart = shape[PARTS["heart"]]
    centre = heart.mean(axis=0)
    scaled = centre + (heart - centre) * (factor, 1.0 + (factor - 1.0) / 3.0)
    scaled[:, 1] += heart[:, 1].max() - scaled[:, 1].max()
    out = shape.copy()
    out[PARTS["heart"]] = scaled
    return out


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draw one normal patient (see the module docstring)."""
    habitus = float(rng.beta(1.6, 1.6))
    shape = with_ctr(sample_shape(rng), float(rng.uniform(*NORMAL_CTR)))
    bubble = (float(rng.uniform(0.25, 0.55)), 0.0, float(rng.uniform(0.06, 0.12))) if rng.uniform() < 0.6 else (
        0.0, 0.0, 0.0)
    return Patient(
        shape=shape,
        habitus=habitus,
        scale=float(0.72 + 0.08 * habitus + rng.uniform(-0.02, 0.02)),
        centre=(float(0.5 + rng.uniform(-0.03, 0.03)), float(0.50 + rng.uniform(-0.03, 0.03))),
        angle=float(np.deg2rad(rng.uniform(-3.0, 3.0))),
        tilt=float(rng.uniform(-1.0, 1.0)),
        rib_top=float(rng.uniform(-1.02, -0.94)),
        rib_step=float(rng.uniform(0.165, 0.19)),
        rib_width=float(0.05 + 0.025 * habitus + rng.uniform(-0.005, 0.005)),
        depth=float(0.75 + 0.6 * habitus + rng.uniform(-0.05, 0.05)),
        margin=float(0.08 + 0.3 * habitus + rng.uniform(0.0, 0.05)),
        bubble=bubble,
        seed=int(rng.integers(2**31)),
    )


def to_pixels(points: np.ndarray, patient: Patient, size: int) -> np.ndarray:
    """Pixel ``(x, y)`` (``N x 2``) on a ``size x size`` canvas of patient points ``N x 2``."""
    c, s = np.cos(patient.angle), np.sin(patient.angle)
    half = 0.5 * size * patient.scale
    x = c * points[:, 0] - s * points[:, 1]
    y = s * points[:, 0] + c * points[:, 1]
    return np.stack([patient.centre[0] * size + half * x, patient.centre[1] * size + half * y], axis=1)


def rib_curves(patient: Patient) -> list[tuple[np.ndarray, bool]]:
    """Rib centrelines (patient frame) as ``(curve M x 2, anterior)``: 10 posterior and 6 anterior per side."""
    ribs = []
    lat = max(abs(outline(patient, "lung_right")[:, 0].min()), outline(patient, "lung_left")[:, 0].max())
    for side in (-1.0, 1.0):
        for i in range(10):
            v = patient.rib_top + i * patient.rib_step
            knots = np.array([(0.09, v), (0.3, v - 0.05), (0.6 * lat, v + 0.06), (0.9 * lat, v + 0.26),
                              (1.02 * lat, v + 0.48)])
            ribs.append((open_spline(knots * (side, 1.0), 8), False))
        for i in range(6):
            v = patient.rib_top + 0.45 + i * patient.rib_step * 1.25 - 0.08 * patient.tilt
            knots = np.array([(1.0 * lat, v), (0.82 * lat, v + 0.10), (0.55 * lat, v + 0.24), (0.36, v + 0.32)])
            ribs.append((open_spline(knots * (side, 1.0), 8), True))
    return ribs


def body_outline(patient: Patient) -> np.ndarray:
    """Closed outline (``M x 2``, patient frame) of neck, shoulders and trunk."""
    lat = max(abs(outline(patient, "lung_right")[:, 0].min()), outline(patient, "lung_left")[:, 0].max())
    wall = lat + 0.08 + patient.margin
    half = np.array([(0.24, -1.9), (0.27, -1.25), (0.75, -1.12), (1.25, -1.02), (wall + 0.12, -0.75),
                     (wall + 0.03, -0.2), (wall, 0.4), (wall - 0.02, 1.1), (wall - 0.02, 1.9)])
    full = np.concatenate([half * (-1.0, 1.0), half[::-1]])
    return closed_spline(full, 8)


def patient_grid(patient: Patient, parts: tuple[str, ...]) -> np.ndarray:
    """Boolean ``GRID x GRID`` raster of the union of ``parts`` (e.g. ``("lung_left",)``) over the patient frame
    ``[-1.2, 1.2]^2`` (row = v, column = u)."""
    image = Image.new("1", (GRID, GRID))
    draw = ImageDraw.Draw(image)
    for part in parts:
        points = (outline(patient, part) + 1.2) / 2.4 * GRID
        draw.polygon([tuple(p) for p in points], fill=1)
    return np.asarray(image, dtype=bool)


def grid_to_patient(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Patient points (``N x 2``) of grid cells ``(rows, cols)`` (cell centres)."""
    return np.stack([(cols + 0.5) / GRID * 2.4 - 1.2, (rows + 0.5) / GRID * 2.4 - 1.2], axis=1)
