"""Normal anatomy of one patient as ``size x size`` float32 layers, and their attenuation.

Thicknesses come from outlines by an inflated-contour model: the Euclidean distance to the outline ``d``
(patient units) gives a circular cross-section ``T = depth * sqrt(1 - (1 - min(d / reach, 1))^2)``, so body,
lungs and heart are rounded volumes rather than flat fills. :func:`attenuation` combines the layers in
soft-tissue units:

``A = body + extra + vessels - 0.92 * air * (1 - cover) * (1 + texture) - airway + bone + metal``

(``cover``: how much of the lung depth the heart and mediastinum take, ``texture``: fBm modulation of the lung
air, ``extra``: soft tissue a finding adds). Bones are paired cortical edges over a faint marrow band
(ribs and clavicles), vertebral bodies with end plates, pedicles and spinous processes, and scapular plates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import distance_transform_edt

from .anatomy import Patient, body_outline, outline, rib_curves
from .canvas import Canvas
from .devices import Stroke
from .shape_model import normals, open_spline
from .texture import fbm
from .vessels import grow_trees

__all__ = ["Layers", "anatomy_layers", "lung_cover", "attenuation", "draw_strokes", "draw_vessels"]

AIR = 0.92  # soft-tissue units of attenuation that lung air removes per unit of air thickness


@dataclass(frozen=True)
class Layers:
    """``size x size`` float32 arrays: ``body`` soft thickness, ``air`` lung air thickness, ``lung_right`` /
    ``lung_left`` soft lung masks, ``cover``, ``vessels``,
    ``texture``, ``airway``, ``bone``, ``metal``, ``extra`` (see the module docstring)."""

    body: np.ndarray
    air: np.ndarray
    lung_right: np.ndarray
    lung_left: np.ndarray
    cover: np.ndarray
    vessels: np.ndarray
    texture: np.ndarray
    airway: np.ndarray
    bone: np.ndarray
    metal: np.ndarray
    extra: np.ndarray

    def replace(self, **changes: np.ndarray) -> "Layers":
        """A copy with ``changes``."""
        return replace(self, **changes)


def _mask(patient: Patient, size: int, points: np.ndarray) -> np.ndarray:
    canvas = Canvas(patient, size)
    canvas.polygon(points, 1.0)
    return canvas.array()


def _profile(mask: np.ndarray, reach_pixels: float) -> np.ndarray:
    d = np.minimum(distance_transform_edt(mask > 0.5) / max(reach_pixels, 1e-6), 1.0)
    return np.sqrt(1.0 - (1.0 - d) ** 2).astype(np.float32)


def lung_cover(patient: Patient, shape: np.ndarray, size: int) -> np.ndarray:
    """How much of the lung depth the heart (rounded) and mediastinum take, ``size x size``, for ``shape``."""
    ppu = 0.5 * size * patient.scale
    heart_mask = _mask(patient, size, outline(replace(patient, shape=shape), "heart"))
    heart = _profile(heart_mask, 0.22 * ppu) * heart_mask
    mediastinum = _mask(patient, size, outline(patient, "mediastinum"))
    return np.clip(0.85 * heart + 0.9 * mediastinum, 0.0, 0.95)


def draw_strokes(canvas: Canvas, strokes: list[Stroke]) -> None:
    """Draw foreign-object strokes on ``canvas`` in order."""
    for stroke in strokes:
        if stroke.fill:
            canvas.polygon(stroke.points, stroke.value)
        else:
            canvas.line(stroke.points, stroke.width, stroke.value, stroke.closed)


def draw_vessels(patient: Patient, size: int, gain: float = 3.0) -> np.ndarray:
    """Projected vessel thickness (soft-tissue units), ``size x size``: each segment a tube of its radius."""
    canvas = Canvas(patient, size)
    segments = []
    for tree in grow_trees(patient):
        child = np.flatnonzero(tree.parent >= 0)
        segments += [(tree.radius[i], tree.nodes[[tree.parent[i], i]]) for i in child]
    for radius, points in sorted(segments, key=lambda s: s[0]):
        canvas.line(points, 2.0 * radius, gain * radius)
    return canvas.array()


def _bone_curve(canvas: Canvas, curve: np.ndarray, width: float, marrow: float, cortex: float) -> None:
    """A band of ``width`` round a centreline: faint marrow between two bright cortical edges."""
    offset = normals(curve, closed=False) * (0.5 * width)
    upper, lower = curve + offset, curve - offset
    canvas.polygon(np.concatenate([upper, lower[::-1]]), marrow)
    for edge in (upper, lower):
        canvas.line(edge, 0.18 * width, cortex)


def _bones(patient: Patient, size: int, rng: np.random.Generator) -> np.ndarray:
    posterior, anterior, axial = Canvas(patient, size), Canvas(patient, size), Canvas(patient, size)
    w = patient.rib_width
    for curve, front in rib_curves(patient):
        if front:
            _bone_curve(anterior, curve, 1.15 * w, 0.008, 0.035)
        else:
            _bone_curve(posterior, curve, w, 0.015, 0.065)
    lift = 0.12 * patient.tilt
    for side in (-1.0, 1.0):
        knots = np.array([(0.09, -0.98), (0.35, -1.07), (0.65, -1.0), (0.92, -1.1)]) * (side, 1.0) - (0.0, lift)
        _bone_curve(anterior, open_spline(knots, 8), 1.2 * w, 0.06, 0.13)
        blade = np.array([(0.8, -1.05), (1.08, -1.02), (1.04, -0.45), (0.86, -0.6)]) * (side, 1.0)
        axial.polygon(blade, 0.04)
    step = patient.rib_step
    for i, v in enumerate(np.arange(-1.35, 1.2, step)):
        height = step * float(rng.uniform(0.72, 0.8))
        box = np.array([(-0.085, v), (0.085, v), (0.09, v + height), (-0.09, v + height)])
        axial.polygon(box, 0.09)
        axial.line(box[:2], 0.015, 0.16)
        axial.line(box[2:], 0.015, 0.16)
        for side in (-1.0, 1.0):
            ring = np.array([(0.058 * side, v + 0.3 * height)]) + 0.02 * np.stack(
                [np.cos(np.linspace(0, 2 * np.pi, 12)), 1.4 * np.sin(np.linspace(0, 2 * np.pi, 12))], 1)
            axial.line(ring, 0.012, 0.15, closed=True)
        axial.line(np.array([(0.0, v + 0.45 * height), (0.0, v + 0.85 * height)]), 0.025, 0.12)
    return posterior.array() + anterior.array() + axial.array()


def anatomy_layers(patient: Patient, size: int, strokes: list[Stroke]) -> Layers:
    """The normal layers of ``patient`` at ``size`` with foreign objects ``strokes`` (module docstring)."""
    rng = np.random.default_rng([patient.seed, 2])
    ppu = 0.5 * size * patient.scale
    body_mask = _mask(patient, size, body_outline(patient))
    body = patient.depth * _profile(body_mask, 0.6 * ppu) * body_mask
    lungs = [_mask(patient, size, outline(patient, part)) for part in ("lung_right", "lung_left")]
    air = 0.72 * patient.depth * sum(_profile(m, 0.32 * ppu) * m for m in lungs)
    cover = lung_cover(patient, patient.shape, size)
    airway = Canvas(patient, size)
    airway.line(np.array([(0.0, -1.6), (0.0, -0.35)]), 0.075, 0.14)
    for side in (-1.0, 1.0):
        airway.line(np.array([(0.0, -0.38), (0.13 * side, -0.2), (0.2 * side, -0.08)]), 0.05, 0.1)
    u, v, r = patient.bubble
    if r > 0:
        base = outline(patient, "lung_left")
        v = float(base[np.abs(base[:, 0] - u) < 0.1, 1].max()) + 1.2 * r
        airway.polygon(np.array([u, v]) + r * np.stack(
            [np.cos(np.linspace(0, 2 * np.pi, 20)), 0.7 * np.sin(np.linspace(0, 2 * np.pi, 20))], 1), 0.25)
    metal = Canvas(patient, size)
    draw_strokes(metal, strokes)
    lung = np.clip(lungs[0] + lungs[1], 0.0, 1.0)
    texture = 0.06 * fbm(rng, size) * lung
    return Layers(body=body, air=air, lung_right=lungs[0], lung_left=lungs[1], cover=cover,
                  vessels=draw_vessels(patient, size) * lung, texture=texture, airway=airway.array(),
                  bone=_bones(patient, size, rng), metal=metal.array(), extra=np.zeros_like(body))


def attenuation(layers: Layers) -> np.ndarray:
    """Line integral ``size x size`` in soft-tissue units (module docstring)."""
    air = AIR * layers.air * (1.0 - layers.cover) * (1.0 + layers.texture)
    return (layers.body + layers.extra + layers.vessels - air - layers.airway + layers.bone + layers.metal).astype(
        np.float32)
