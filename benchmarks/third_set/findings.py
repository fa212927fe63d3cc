"""Findings of the third set, drawn in 3-D inside the phantom (:mod:`.anatomy`).

A finding changes three fields of the lung, evaluated at any patient coordinates (:func:`finding_fields`):
``lung`` (aerated lung occupancy), ``gap`` (pleural air where lung was) and ``fill`` (fraction of the lung
replaced by material of soft-tissue attenuation). Cardiomegaly changes the anatomy instead
(:func:`finding_anatomy`). The image then follows by projection, so a meniscus, a pleural line or a silhouette
comes from geometry, not from painting.

Kinds (:data:`KINDS`): nodule (1-3 lobulated spheres in the lung), consolidation (part of a lobe bounded by a
fissure plane, patchy, with air bronchograms), effusion (fluid in the lowest pleural space of an upright
patient, its surface rising along the chest wall), pneumothorax (lung shrunk towards its base and hilum, pleural
air at the apex and lateral wall, a visceral pleural line), cardiomegaly (heart ellipsoid enlarged to a
cardiothoracic ratio of :data:`CARDIOMEGALY_CTR`, normal :data:`NORMAL_CTR`) and hilar mass (a lobulated
mass at one hilum, against the mediastinum).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .anatomy import Anatomy, cage_radius, heart_x_extent, lung_occupancy, mediastinum_halfwidth, soft, taper

__all__ = ["KINDS", "Finding", "sample_finding", "finding_anatomy", "finding_fields", "bronchogram_contrast",
           "cardiothoracic_ratio", "hilum_points", "NORMAL_CTR", "CARDIOMEGALY_CTR"]

KINDS = ("nodule", "consolidation", "effusion", "pneumothorax", "cardiomegaly", "hilar_mass")
NORMAL_CTR = (0.40, 0.50)  # heart width / inner thoracic width, patient coordinates
CARDIOMEGALY_CTR = (0.53, 0.59)


@dataclass(frozen=True)
class Finding:
    """One finding: ``kind``, the side (-1 right, +1 left) and its drawn parameters."""

    kind: str
    side: float
    params: dict = field(default_factory=dict)


def cardiothoracic_ratio(a: Anatomy) -> float:
    """Widest heart width over the widest inner thoracic width (the lung borders), patient coordinates."""
    return heart_x_extent(a) / (0.95 * a.cage_a)


def _inside_lung(rng: np.random.Generator, a: Anatomy, side: float, margin: float, box: tuple) -> np.ndarray:
    """A random point well inside the lung of ``side`` (its lung occupancy 1 within ``margin`` units)."""
    (x0, x1), (z0, z1) = box
    for _ in range(20):
        p = rng.uniform((x0, -a.cage_b * 0.7, z0), (x1, a.cage_b * 0.7, z1), (64, 3))
        p[:, 0] *= side
        ok = lung_occupancy(a, p[:, 0], p[:, 1], p[:, 2]) >= 1.0
        for axis in (0, 2):
            shifted = p.copy()
            for sign in (-1.0, 1.0):
                shifted[:, axis] = p[:, axis] + sign * margin
                ok &= lung_occupancy(a, shifted[:, 0], shifted[:, 1], shifted[:, 2]) >= 1.0
        if ok.any():
            return p[np.argmax(ok)]
    return np.array([side * 0.45 * a.cage_a, 0.0, a.hilum_z + 0.1])


def sample_finding(rng: np.random.Generator, a: Anatomy, kind: str) -> Finding:
    """Draw a finding of ``kind`` for the patient ``a``."""
    side = float(rng.choice((-1.0, 1.0)))
    p: dict = {}
    if kind == "nodule":
        n = int(rng.choice((1, 2, 3), p=(0.5, 0.3, 0.2)))
        p["blobs"] = []
        for _ in range(n):
            s = float(rng.choice((-1.0, 1.0)))
            r = rng.uniform(0.045, 0.080)
            centre = _inside_lung(rng, a, s, r, ((0.2, 0.8 * a.cage_a), (a.dome_peak[0] + 0.1, a.cage_top - 0.15)))
            p["blobs"].append((centre, r, rng.uniform(0.0, 6.3, 3), rng.uniform(0.7, 1.0)))
    elif kind == "consolidation":
        lobe = str(rng.choice(("lower", "upper", "middle"), p=(0.5, 0.3, 0.2)))
        side = -1.0 if lobe == "middle" else side
        p.update(lobe=lobe, slope=rng.uniform(0.85, 1.15), radius=rng.uniform(0.22, 0.34),
                 strength=rng.uniform(0.50, 0.80), waves=rng.normal(0.0, 9.0, (4, 3)), phases=rng.uniform(0, 6.3, 4))
        zone = {"lower": (a.dome_peak[0] + 0.05, a.hilum_z), "upper": (a.hilum_z + 0.15, a.cage_top - 0.15),
                "middle": (a.dome_peak[0] + 0.12, a.hilum_z - 0.05)}[lobe]
        for _ in range(10):
            p["centre"] = _inside_lung(rng, a, side, 0.05, ((0.25, 0.75 * a.cage_a), zone))
            if _lobe(a, lobe, side, p["slope"], *p["centre"]) > 0.5:
                break
    elif kind == "effusion":
        dome = a.dome_peak[0] if side < 0 else a.dome_peak[1]
        p.update(level=dome - rng.uniform(0.02, 0.10), rise=rng.uniform(0.18, 0.32))
    elif kind == "pneumothorax":
        dome = a.dome_peak[0] if side < 0 else a.dome_peak[1]
        p.update(anchor=np.array([side * (a.mediastinum + 0.10), -0.05, dome]), factor=rng.uniform(0.80, 0.90))
    elif kind == "cardiomegaly":
        p["ctr"] = rng.uniform(*CARDIOMEGALY_CTR)
    elif kind == "hilar_mass":
        centre = np.array([side * (a.mediastinum + rng.uniform(0.09, 0.14)), rng.uniform(-0.06, 0.04),
                           a.hilum_z + rng.uniform(-0.04, 0.10)])
        p["blobs"] = [(centre, rng.uniform(0.09, 0.13), rng.uniform(0.0, 6.3, 3), 1.0)]
    else:
        raise ValueError(f"unknown finding kind {kind!r}; expected one of {KINDS}")
    return Finding(kind, side, p)


def finding_anatomy(a: Anatomy, f: Finding | None) -> Anatomy:
    """The patient with the finding's anatomical change (cardiomegaly: the heart scaled to its ratio, resting
    on the dome); other findings leave the anatomy as it is."""
    if f is None or f.kind != "cardiomegaly":
        return a
    scale = f.params["ctr"] / cardiothoracic_ratio(a)
    axes = tuple(v * scale for v in a.heart_axes)
    cx, cy, cz = a.heart_centre
    centre = (cx + 0.3 * (scale - 1.0) * a.heart_axes[0], cy, cz + 0.4 * (scale - 1.0) * a.heart_axes[2])
    return dataclasses.replace(a, heart_axes=axes, heart_centre=centre)


def _blobs(blobs: list, x, y, z) -> np.ndarray:
    """Occupancy of lobulated spheres ``(centre, radius, phases, density)`` (the densest where they overlap)."""
    x, y, z = np.broadcast_arrays(x, y, z)
    out = np.zeros(x.shape, np.float32)
    for centre, r, phase, density in blobs:
        centre, phase = [float(v) for v in centre], [float(v) for v in phase]
        dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
        dist = np.sqrt(dx**2 + dy**2 + dz**2)
        near = dist < 1.3 * r
        dx, dy, dz, dist = dx[near], dy[near], dz[near], dist[near]
        theta, psi = np.arctan2(dz, dx), np.arctan2(dy, np.sqrt(dx**2 + dz**2) + 1e-9)
        wobble = 1.0 + 0.12 * np.sin(3 * theta + phase[0]) * np.cos(2 * psi + phase[1]) + 0.06 * np.sin(5 * theta + phase[2])
        out[near] = np.maximum(out[near], density * soft(dist - r * wobble, 0.015))
    return out


def _lobe(a: Anatomy, lobe: str, side: float, slope: float, x, y, z) -> np.ndarray:
    """Occupancy of a lobe bounded by the oblique fissure (a plane from high posteriorly, about ``hilum_z +
    0.25``, to the anterior dome; ``slope`` scales its steepness) and, on the right, the horizontal fissure."""
    y_post, z_post, y_ant = -0.7 * a.cage_b, a.hilum_z + 0.25, 0.3 * a.cage_b
    k = slope * (z_post - min(a.dome_peak)) / (y_ant - y_post)
    oblique = (z - z_post) + k * (y - y_post)  # < 0: lower lobe (posterior-inferior of the oblique fissure)
    if lobe == "lower":
        return soft(oblique, 0.02)
    if lobe == "upper":
        return soft(-oblique, 0.02) if side > 0 else soft(-oblique, 0.02) * soft(a.hilum_z - 0.02 - z, 0.02)
    return soft(-oblique, 0.02) * soft(z - (a.hilum_z - 0.02), 0.02)  # right middle lobe


def _consolidation(a: Anatomy, f: Finding, x, y, z) -> np.ndarray:
    """Fill of a consolidated lobe part: a ball cut by the fissure plane(s), patchy."""
    p = f.params
    lobe = _lobe(a, p["lobe"], f.side, p["slope"], x, y, z)
    c = [float(v) for v in p["centre"]]
    ball = soft(np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - p["radius"], 0.12)
    patch = 0.0
    for k, phase in zip(p["waves"].tolist(), p["phases"].tolist()):
        patch = patch + np.cos(k[0] * x + k[1] * y + k[2] * z + phase)
    patchy = np.clip(0.75 + 0.12 * patch, 0.3, 1.0)
    return (p["strength"] * lobe * ball * patchy * (f.side * x > 0)).astype(np.float32)


def finding_fields(
    a: Anatomy, f: Finding | None, x, y, z, lung: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lung, gap, fill)`` at patient coordinates for the patient ``a`` (already :func:`finding_anatomy`):
    aerated lung occupancy, pleural air occupancy, and the fraction of the lung filled with soft tissue.
    ``lung``: the patient's lung occupancy at these coordinates when already known."""
    lung = lung_occupancy(a, x, y, z) if lung is None else lung
    zero = np.zeros_like(lung)
    if f is None or f.kind == "cardiomegaly":
        return lung, zero, zero
    p = f.params
    if f.kind in ("nodule", "hilar_mass"):
        return lung, zero, _blobs(p["blobs"], x, y, z)
    if f.kind == "consolidation":
        return lung, zero, _consolidation(a, f, x, y, z)
    same_side = f.side * x > 0
    if f.kind == "effusion":
        lateral = np.clip(np.abs(x) / a.cage_a, 0.0, 1.0) ** 4
        surface = p["level"] + p["rise"] * (0.75 * lateral + 0.25 * np.clip(cage_radius(a, x, y, z), 0.0, 1.0) ** 8)
        fluid = soft(z - surface, 0.015) * same_side
        return lung, zero, fluid.astype(np.float32)
    # pneumothorax: the lung's outline in the frontal plane shrunk towards an anchor at its base by the hilum
    # (the lung retracts from the apex and the lateral wall; anterior and posterior surfaces stay)
    anchor, factor = [float(v) for v in p["anchor"]], p["factor"]

    def outline(s: float) -> np.ndarray:
        xs, zs = anchor[0] + (x - anchor[0]) / s, anchor[2] + (z - anchor[2]) / s
        lateral = soft(np.abs(xs) - 0.95 * a.cage_a * taper(a, zs), 0.015)
        return lateral * soft(zs - (a.cage_top - 0.04), 0.015)

    inner = outline(factor)
    collapsed = np.where(same_side, lung * inner, lung)
    line = np.where(same_side, lung * np.clip(inner - outline(factor * 0.985), 0.0, 1.0), 0.0)
    return collapsed.astype(np.float32), (lung - collapsed).astype(np.float32), (0.7 * line).astype(np.float32)


def bronchogram_contrast(a: Anatomy, f: Finding | None, segments: np.ndarray) -> np.ndarray:
    """Attenuation contrast of air bronchi running along vessel ``segments`` (K, 7): negative inside a
    consolidation (air in filled lung), 0 elsewhere and for the other kinds."""
    if f is None or f.kind != "consolidation" or not len(segments):
        return np.zeros(len(segments))
    mid = (segments[:, :3] + segments[:, 3:6]) / 2.0
    fill = _consolidation(a, f, mid[:, 0], mid[:, 1], mid[:, 2])
    return -(1.0 - a.lung_density) * fill * (segments[:, 6] > 0.004)


def hilum_points(a: Anatomy) -> list[np.ndarray]:
    """Centres of the right and left hila (vessel tree roots)."""
    w = float(mediastinum_halfwidth(a, np.float32(a.hilum_z)))
    return [np.array([-(w + 0.05), -0.02, a.hilum_z + 0.03]), np.array([w + 0.05, -0.02, a.hilum_z])]
