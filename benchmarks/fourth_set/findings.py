"""Findings of the fourth set, each a change of the normal layers; the mask is where the line integral changed.

Kinds (:data:`KINDS`); ``side`` -1 is the image-left (patient's right) lung, +1 the image-right one:

- ``nodule``: either one spiculated nodule (lobulated radius 0.08-0.11 units with 8-14 radial spicules 1-2
  radii long) or 3-6 smooth nodules (radius 0.05-0.07) scattered over both lungs; spherical soft tissue;
- ``consolidation``: a lobar-zone region (upper, lower, or the right middle zone) cut by a straight fissure,
  radius 0.30-0.42 units, patchy (fBm), replacing 65-95 % of the air, vessels silhouetted inside, aerated
  bronchi (air bronchograms) along the larger vessel branches;
- ``effusion``: meniscus (65 %: fluid to a level 0.25-0.50 units above the costophrenic angle, rising laterally
  as ``t^4`` up the chest wall) or subpulmonic (35 %: a fluid layer 0.10-0.18 units thick, thickest laterally,
  under a lifted pseudo-dome); the fluid replaces the lung air and hides its vessels;
- ``pneumothorax``: apical (45 %) or lateral (55 %): the lung outline retracted by 0.20-0.34 units towards the
  hilum; beyond it pleural air (45 % more air path) without vessels or texture, at the retracted edge a thin
  visceral pleural line;
- ``cardiomegaly``: the heart of the shape model scaled to a cardiothoracic ratio in :data:`CARDIOMEGALY_CTR`
  (normals: :data:`~.anatomy.NORMAL_CTR`);
- ``reticular`` (the kind only this set has): an interstitial reticular pattern, a Worley cell-edge net (cells
  0.05-0.08 units) of soft-tissue lines with loss of aeration (up to 55 % of the air), basal and peripheral, in
  both lungs (50 %) or one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import binary_closing, binary_fill_holes

from .anatomy import Patient, grid_to_patient, outline, patient_grid, with_ctr
from .canvas import Canvas, pixel_to_patient
from .layers import Layers, attenuation, lung_cover
from .texture import cell_edges, fbm
from .vessels import grow_trees

__all__ = ["KINDS", "CARDIOMEGALY_CTR", "Finding", "sample_finding", "apply_finding", "finding_mask"]

KINDS: tuple[str, ...] = ("nodule", "consolidation", "effusion", "pneumothorax", "cardiomegaly", "reticular")
CARDIOMEGALY_CTR: tuple[float, float] = (0.58, 0.66)
MASK_THRESHOLD = 0.012  # soft-tissue units of line-integral change


@dataclass(frozen=True)
class Finding:
    """``kind``, ``side``, kind-specific ``params`` and a ``seed`` for its own noise."""

    kind: str
    side: int
    params: dict = field(default_factory=dict)
    seed: int = 0


def _lung_part(side: int) -> str:
    return "lung_left" if side > 0 else "lung_right"


def _inner_points(patient: Patient, part: str, margin: int) -> np.ndarray:
    """Patient points of grid cells at least ``margin`` cells inside the lung ``part`` and off the heart."""
    lung = patient_grid(patient, (part,)) & ~patient_grid(patient, ("heart", "mediastinum"))
    inner = lung.copy()
    for axis in (0, 1):
        for shift in range(1, margin + 1):
            inner &= np.roll(lung, shift, axis) & np.roll(lung, -shift, axis)
    rows, cols = np.nonzero(inner)
    return grid_to_patient(rows, cols)


def sample_finding(rng: np.random.Generator, patient: Patient, kind: str) -> Finding:
    """Draw a finding of ``kind`` for ``patient`` (module docstring)."""
    side = 1 if rng.uniform() < 0.5 else -1
    seed = int(rng.integers(2**31))
    if kind == "nodule":
        if rng.uniform() < 0.5:
            spots = _inner_points(patient, _lung_part(side), 5)
            centres = spots[rng.integers(len(spots))][None]
            radii = rng.uniform(0.08, 0.11, 1)
        else:
            spots = np.concatenate([_inner_points(patient, p, 4) for p in ("lung_right", "lung_left")])
            centres = spots[rng.choice(len(spots), int(rng.integers(3, 7)), replace=False)]
            radii = rng.uniform(0.05, 0.07, len(centres))
        params = {"centres": centres + rng.uniform(-0.012, 0.012, centres.shape), "radii": radii,
                  "spicules": int(rng.integers(8, 15)) if len(centres) == 1 else 0,
                  "density": float(rng.uniform(0.8, 1.0))}
    elif kind == "consolidation":
        zones = ["upper", "lower"] + (["middle"] if side < 0 else [])
        params = {"zone": zones[int(rng.integers(len(zones)))], "radius": float(rng.uniform(0.3, 0.42)),
                  "fill": float(rng.uniform(0.65, 0.95)), "tilt": float(rng.uniform(-0.4, 0.4))}
    elif kind == "effusion":
        params = {"subpulmonic": bool(rng.uniform() < 0.35), "height": float(rng.uniform(0.25, 0.5)),
                  "layer": float(rng.uniform(0.1, 0.18))}
    elif kind == "pneumothorax":
        params = {"apical": bool(rng.uniform() < 0.45), "gap": float(rng.uniform(0.2, 0.34))}
    elif kind == "cardiomegaly":
        params = {"ctr": float(rng.uniform(*CARDIOMEGALY_CTR))}
    elif kind == "reticular":
        params = {"both": bool(rng.uniform() < 0.5), "cell": float(rng.uniform(0.05, 0.08)),
                  "strength": float(rng.uniform(0.8, 1.0))}
    else:
        raise ValueError(f"unknown finding kind {kind!r}; expected one of {KINDS}")
    return Finding(kind, side, params, seed)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _nodule(layers: Layers, patient: Patient, finding: Finding, size: int) -> Layers:
    u, v = pixel_to_patient(patient, size)
    rng = np.random.default_rng(finding.seed)
    extra = layers.extra.copy()
    spicules = Canvas(patient, size)
    for centre, radius in zip(finding.params["centres"], finding.params["radii"]):
        du, dv = u - centre[0], v - centre[1]
        angle = np.arctan2(dv, du)
        lobes = radius * (1 + 0.1 * np.cos(3 * angle + rng.uniform(0, 6))
                          + 0.07 * np.cos(5 * angle + rng.uniform(0, 6)))
        rho2 = (du**2 + dv**2) / lobes**2
        extra += finding.params["density"] * 3.5 * lobes * np.sqrt(np.clip(1 - rho2, 0, None))
        for theta in rng.uniform(0, 2 * np.pi, finding.params["spicules"]):
            direction = np.array([np.cos(theta), np.sin(theta)])
            length = radius * rng.uniform(1.0, 2.0)
            spicules.line(centre + np.outer([0.8 * radius, radius + length], direction), 0.01, 0.05)
    return layers.replace(extra=extra + spicules.array() * (layers.lung_right + layers.lung_left))


def _consolidation(layers: Layers, patient: Patient, finding: Finding, size: int) -> Layers:
    p = finding.params
    u, v = pixel_to_patient(patient, size)
    lung_out = outline(patient, _lung_part(finding.side))
    lat = lung_out[np.abs(lung_out[:, 0]).argmax(), 0]
    top, bottom = lung_out[:, 1].min(), lung_out[:, 1].max()
    cu = 0.6 * lat if p["zone"] != "middle" else 0.45 * lat
    cv = {"upper": top + 0.35 * (bottom - top), "lower": top + 0.78 * (bottom - top),
          "middle": top + 0.62 * (bottom - top)}[p["zone"]]
    rng = np.random.default_rng(finding.seed)
    blob = 1.0 - np.hypot(u - cu, (v - cv) * 1.2) / p["radius"] + 0.25 * fbm(rng, size, octaves=4)
    fissure = (v - cv) * np.cos(p["tilt"]) - (u - cu) * np.sin(p["tilt"]) * np.sign(lat)
    cut = fissure if p["zone"] == "upper" else -fissure
    region = _smoothstep(blob / 0.25) * _smoothstep((0.12 - cut) / 0.03)
    region *= layers.lung_left if finding.side > 0 else layers.lung_right
    bronchi = Canvas(patient, size)
    tree = grow_trees(patient)[int(finding.side > 0)]
    for i in np.flatnonzero((tree.parent >= 0) & (tree.radius > 0.008)):
        bronchi.line(tree.nodes[[tree.parent[i], i]] + 0.012, 1.3 * tree.radius[i], 1.0)
    filled = p["fill"] * region * (1.0 - 0.85 * np.clip(bronchi.array(), 0, 1))
    return layers.replace(air=layers.air * (1 - filled), vessels=layers.vessels * (1 - region),
                          texture=layers.texture * (1 - region))


def _lower_border(points: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The lowest ``v`` of outline ``points`` at each ``u`` (interpolated over 40 bins)."""
    bins = np.linspace(points[:, 0].min(), points[:, 0].max(), 41)
    which = np.clip(np.digitize(points[:, 0], bins) - 1, 0, 39)
    low = np.full(40, -np.inf)
    np.maximum.at(low, which, points[:, 1])
    centres = 0.5 * (bins[1:] + bins[:-1])
    ok = np.isfinite(low)
    return np.interp(u, centres[ok], low[ok])


def _effusion(layers: Layers, patient: Patient, finding: Finding, size: int) -> Layers:
    p = finding.params
    u, v = pixel_to_patient(patient, size)
    points = outline(patient, _lung_part(finding.side), 20)
    lat, med = points[np.abs(points[:, 0]).argmax(), 0], points[np.abs(points[:, 0]).argmin(), 0]
    t = np.clip((u - med) / (lat - med), 0.0, 1.0)
    base = _lower_border(points, u)
    if p["subpulmonic"]:
        level = base - p["layer"] * (0.4 + 0.6 * t)
    else:
        level = np.minimum(_lower_border(points, np.full(1, lat))[0] - p["height"] - 0.45 * t**4,
                           base - 0.04)
    fluid = _smoothstep((v - level) / 0.03) * (layers.lung_left if finding.side > 0 else layers.lung_right)
    return layers.replace(air=layers.air * (1 - fluid), vessels=layers.vessels * (1 - fluid),
                          texture=layers.texture * (1 - fluid), extra=layers.extra + 0.08 * fluid)


def _pneumothorax(layers: Layers, patient: Patient, finding: Finding, size: int) -> Layers:
    p = finding.params
    points = outline(patient, _lung_part(finding.side), 12)
    hilum = np.array([np.sign(finding.side) * 0.2, 0.0])
    top, bottom = points[:, 1].min(), points[:, 1].max()
    lat = np.abs(points[:, 0]).max()
    if p["apical"]:
        height = bottom - top
        weight = _smoothstep((0.2 * top + 0.8 * bottom - points[:, 1] - 0.45 * height) / (0.35 * height))
    else:
        weight = _smoothstep((np.abs(points[:, 0]) - 0.45 * lat) / (0.35 * lat)) * _smoothstep(
            (bottom - 0.12 - points[:, 1]) / 0.15)
    direction = hilum - points
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    retracted_points = points + p["gap"] * weight[:, None] * direction
    canvas = Canvas(patient, size)
    canvas.polygon(retracted_points, 1.0)
    retracted = canvas.array()
    lung = layers.lung_left if finding.side > 0 else layers.lung_right
    space = np.clip(lung - retracted, 0.0, 1.0)
    line = Canvas(patient, size)
    edge = weight * p["gap"] > 0.015
    for a, b in zip(np.flatnonzero(edge), np.flatnonzero(edge) + 1):
        line.line(retracted_points[[a, b % len(points)]], 0.008, 0.06)
    return layers.replace(air=layers.air * (1 + 0.45 * space),
                          vessels=layers.vessels * (1 - space), texture=layers.texture * (1 - space),
                          extra=layers.extra + line.array() * lung)


def _cardiomegaly(layers: Layers, patient: Patient, finding: Finding, size: int) -> Layers:
    return layers.replace(cover=lung_cover(patient, with_ctr(patient.shape, finding.params["ctr"]), size))


def _reticular(layers: Layers, patient: Patient, finding: Finding, size: int) -> Layers:
    p = finding.params
    u, v = pixel_to_patient(patient, size)
    rng = np.random.default_rng(finding.seed)
    envelope = np.zeros_like(u)
    for part, lung in (("lung_right", layers.lung_right), ("lung_left", layers.lung_left)):
        if not p["both"] and part != _lung_part(finding.side):
            continue
        points = outline(patient, part)
        lat, top, bottom = np.abs(points[:, 0]).max(), points[:, 1].min(), points[:, 1].max()
        basal = _smoothstep((v - (top + 0.4 * (bottom - top))) / (0.35 * (bottom - top)))
        peripheral = _smoothstep((np.abs(u) - 0.35 * lat) / (0.4 * lat))
        envelope += lung * basal * (0.5 + 0.5 * peripheral)
    cell = p["cell"] * 0.5 * size * patient.scale
    net = np.exp(-0.5 * (cell_edges(rng, size, cell) / max(0.09 * cell, 0.35)) ** 2)
    strength = p["strength"] * envelope
    return layers.replace(extra=layers.extra + 0.25 * strength * net, air=layers.air * (1 - 0.55 * strength))


_APPLY = {"nodule": _nodule, "consolidation": _consolidation, "effusion": _effusion,
          "pneumothorax": _pneumothorax, "cardiomegaly": _cardiomegaly, "reticular": _reticular}


def apply_finding(layers: Layers, patient: Patient, finding: Finding) -> Layers:
    """The layers of ``patient`` with ``finding`` (layers ``size x size``)."""
    return _APPLY[finding.kind](layers, patient, finding, layers.body.shape[0])


def finding_mask(normal: Layers, abnormal: Layers) -> np.ndarray:
    """Boolean ``size x size``: where the line integral changed by more than :data:`MASK_THRESHOLD` (closed,
    holes filled)."""
    changed = np.abs(attenuation(abnormal) - attenuation(normal)) > MASK_THRESHOLD
    return binary_fill_holes(binary_closing(changed, iterations=2)) & (normal.body > 0)
