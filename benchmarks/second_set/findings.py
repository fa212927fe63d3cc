"""Findings of the second synthetic set, each drawn into the attenuation layers with a pixel mask.

Kinds (:data:`KINDS`), drawn differently from the built-in set:

- ``nodule``: one to three spherical soft-tissue nodules with a wavy outline, each 0.05-0.10 in radius;
- ``consolidation``: a fluffy airspace opacity (a Gaussian blob broken up by ``1/f**3`` noise, cut by the
  lung border) with dark air bronchograms, markings silhouetted inside;
- ``effusion``: fluid at one base under a meniscus that climbs the lateral chest wall; it displaces lung
  air, fills the costophrenic angle and hides the hemidiaphragm;
- ``pneumothorax``: a visceral pleural line parallel to the lateral chest wall and below the apex, with
  air and no lung markings beyond it;
- ``cardiomegaly``: the heart widened to a cardiothoracic ratio in :data:`CARDIOMEGALY_CTR`;
- ``collapse``: a collapsed upper lobe (a dense wedge against the upper mediastinum under an elevated fissure,
  trachea pulled to that side) or lower lobe (a triangle from the hilum to the medial hemidiaphragm, behind the
  heart on the patient's left), the rest of that lung hyperlucent.

Masks: the nodules, the opacified lung, the fluid in the lung field, the pleural air space, the cardiac
silhouette, and the collapsed lobe inside the thorax.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .anatomy import Anatomy, Grid, anatomy_fields, lung_borders
from .texture import branch_segments, power_noise

__all__ = ["CARDIOMEGALY_CTR", "KINDS", "Finding", "Layers", "apply_finding", "heart_widths", "sample_finding"]

KINDS: tuple[str, ...] = ("nodule", "consolidation", "effusion", "pneumothorax", "cardiomegaly", "collapse")
CARDIOMEGALY_CTR: tuple[float, float] = (0.56, 0.66)


@dataclass(frozen=True)
class Finding:
    """One finding: ``kind``, ``side`` (+1 image right = patient left), kind-specific ``params``, shape ``seed``."""

    kind: str
    side: int
    params: dict = field(default_factory=dict)
    seed: int = 0


@dataclass
class Layers:
    """Attenuation terms a finding may change (each ``H x W`` float32): lung ``air`` thickness, ``markings``
    (vessels and texture, multiplied by the lungs), ``extra`` density, and the trachea's lateral ``shift``."""

    air: np.ndarray
    markings: np.ndarray
    extra: np.ndarray
    trachea_shift: float = 0.0


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _lung_points(
    rng: np.random.Generator, a: Anatomy, side: int, margin: float, count: int
) -> list[tuple[float, float]]:
    """``count`` points drawn uniformly in the lung field of ``side``, at least ``margin`` inside its border."""
    grid = Grid(a, 96)
    lung = anatomy_fields(a, grid)["lung_right" if side > 0 else "lung_left"] > 0.99
    step = max(1, int(np.ceil(margin * a.scale * 96 / 2.0)))
    core = lung
    for dy, dx in ((step, 0), (-step, 0), (0, step), (0, -step)):
        core = core & np.roll(np.roll(lung, dy, 0), dx, 1)
    candidates = np.flatnonzero(core)
    if candidates.size == 0:
        raise RuntimeError("No room for a finding in the lung field; the anatomy ranges are inconsistent.")
    picks = rng.choice(candidates, size=count, replace=candidates.size < count)
    return [(float(grid.u.flat[i]), float(grid.v.flat[i])) for i in picks]


def sample_finding(rng: np.random.Generator, a: Anatomy, kind: str) -> Finding:
    """Draw a finding of ``kind`` (one of :data:`KINDS`) for the patient ``a``.

    ``params`` per kind: nodule ``nodules`` (a list of ``(u, v, radius, density, phase)``, each on its own
    side); consolidation ``u, v, radius, density``; effusion ``height`` (fraction of the lung height),
    ``meniscus``, ``displaced`` (fraction of the air the fluid replaces); pneumothorax ``gap``, ``extra_air``;
    cardiomegaly ``ctr``; collapse ``lobe`` (``"upper"`` or ``"lower"``), ``density``.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown finding kind {kind!r}; expected one of {KINDS}.")
    side = int(rng.choice((-1, 1)))
    seed = int(rng.integers(0, 2**31 - 1))
    if kind == "nodule":
        count = int(rng.choice((1, 2, 3), p=(0.5, 0.3, 0.2)))
        radii = rng.uniform(0.05, 0.10, count)
        nodules = []
        for r in radii:
            s = int(rng.choice((-1, 1)))
            (u, v), = _lung_points(rng, a, s, 1.2 * r, 1)
            nodules.append((u, v, float(r), float(rng.uniform(0.22, 0.36)), float(rng.uniform(0, 2 * np.pi))))
        params = {"nodules": nodules}
    elif kind == "consolidation":
        (u, v), = _lung_points(rng, a, side, 0.06, 1)
        params = {"u": u, "v": v, "radius": float(rng.uniform(0.13, 0.22)), "density": float(rng.uniform(0.24, 0.38))}
    elif kind == "effusion":
        params = {
            "height": float(rng.uniform(0.30, 0.50)),
            "meniscus": float(rng.uniform(0.06, 0.16)),
            "displaced": float(rng.uniform(0.6, 0.9)),
        }
    elif kind == "pneumothorax":
        params = {"gap": float(rng.uniform(0.10, 0.20)), "extra_air": float(rng.uniform(0.10, 0.16))}
    elif kind == "cardiomegaly":
        params = {"ctr": float(rng.uniform(*CARDIOMEGALY_CTR))}
    else:
        params = {"lobe": str(rng.choice(("upper", "lower"))), "density": float(rng.uniform(0.25, 0.40))}
    return Finding(kind=kind, side=side, params=params, seed=seed)


def heart_widths(a: Anatomy, finding: Finding | None) -> tuple[float, float]:
    """The heart's half-widths (image left, image right), enlarged for cardiomegaly."""
    if finding is None or finding.kind != "cardiomegaly":
        return a.heart_widths
    factor = finding.params["ctr"] / a.ctr
    return a.heart_widths[0] * factor, a.heart_widths[1] * factor


def apply_finding(
    finding: Finding, a: Anatomy, grid: Grid, fields: dict[str, np.ndarray], layers: Layers
) -> np.ndarray:
    """Draw ``finding`` into ``layers`` (in place) and return its mask (``H x W`` bool)."""
    u, v, edge = grid.u, grid.v, grid.edge
    q = finding.params
    name = "right" if finding.side > 0 else "left"
    lung = fields[f"lung_{name}"]
    rng = np.random.default_rng(finding.seed)
    if finding.kind == "nodule":
        mask = np.zeros(u.shape, bool)
        for nu, nv, radius, density, phase in q["nodules"]:
            du, dv = u - nu, v - nv
            angle = np.arctan2(dv, du)
            outline = radius * (1.0 + 0.08 * np.cos(5.0 * angle + phase) + 0.05 * np.cos(3.0 * angle - phase))
            r = np.hypot(du, dv) / outline
            layers.extra += density * np.sqrt(np.clip(1.0 - r**2, 0.0, 1.0)) * np.clip((1.0 - r) / 0.15 + 0.5, 0, 1)
            mask |= r < 1.0
        return mask
    if finding.kind == "consolidation":
        blob = np.exp(-((u - q["u"]) ** 2 + (v - q["v"]) ** 2) / (2.0 * q["radius"] ** 2))
        field_ = blob + 0.25 * power_noise(rng, grid.size, 3.0, low_cut=2.0)
        opacity = _smoothstep((field_ - 0.35) / 0.3) * lung
        bronchi = np.zeros_like(u)
        origin = (finding.side * (a.mediastinum + 0.08), -0.1)
        angle = np.arctan2(q["v"] - origin[1], q["u"] - origin[0])
        for u0, v0, u1, v1, width in branch_segments(rng, origin, float(angle), 0.09, 0.012, 3):
            t = np.clip(((u - u0) * (u1 - u0) + (v - v0) * (v1 - v0)) / ((u1 - u0) ** 2 + (v1 - v0) ** 2 + 1e-9), 0, 1)
            d = np.hypot(u - u0 - t * (u1 - u0), v - v0 - t * (v1 - v0))
            bronchi = np.maximum(bronchi, np.clip(1.0 - d / max(width, edge), 0.0, 1.0))
        layers.extra += q["density"] * opacity * (1.0 - 0.45 * bronchi)
        layers.markings *= 1.0 - 0.8 * opacity
        return (opacity > 0.5) & (lung > 0.5)
    if finding.kind == "effusion":
        i = int(finding.side > 0)
        base, apex = a.costophrenic[i], a.apex_level[i]
        level = base - q["height"] * (base - apex)
        w = np.clip((finding.side * u - 0.1) / (a.lung_width[i] - 0.1), 0.0, 1.0)
        top = level - q["meniscus"] * w**2
        fluid = _smoothstep((v - top) / 0.05) * lung
        layers.air *= 1.0 - q["displaced"] * fluid * (0.6 + 0.4 * _smoothstep((v - top) / 0.2))
        layers.markings *= 1.0 - fluid
        return (fluid > 0.5) & (lung > 0.5)
    if finding.kind == "pneumothorax":
        i = int(finding.side > 0)
        t = lung_borders(a, v, finding.side)["t"]
        gap = q["gap"] * (0.45 + 0.55 * (1.0 - t))
        line = fields[f"lateral_{name}"] - gap
        apex_line = v - (a.apex_level[i] + 1.2 * q["gap"])
        distance = np.minimum(line, apex_line)
        collapsed = np.clip(distance / edge + 0.5, 0.0, 1.0)
        pleural = lung * (1.0 - collapsed)
        layers.markings *= 1.0 - pleural
        layers.air += (q["extra_air"] / 0.6) * pleural - 0.08 * lung * collapsed
        layers.extra += 0.07 * np.exp(-((distance / 0.006) ** 2)) * lung
        return (pleural > 0.5) & (lung > 0.5)
    if finding.kind == "cardiomegaly":
        return fields["heart"] > 0.5
    # collapse
    i = int(finding.side > 0)
    su = finding.side * u
    thorax = fields["thorax"] * (su > 0)
    hilum_u, hilum_v = a.mediastinum + 0.06, -0.12
    if q["lobe"] == "upper":
        reach = 0.55 * a.lung_width[i]
        top = a.apex_level[i]
        fissure = hilum_v - (hilum_v - top - 0.05) * np.clip((su - hilum_u) / reach, 0.0, 1.0) ** 0.8
        lobe = np.clip((fissure - v) / edge + 0.5, 0.0, 1.0) * (su < hilum_u + reach)
        layers.trachea_shift = 0.035 * finding.side
    else:
        base_u = 0.6 * a.lung_width[i]
        dome_top = a.costophrenic[i] - a.dome_height[i]
        edge_u = hilum_u - 0.04 + (base_u - hilum_u + 0.04) * np.clip((v - hilum_v) / (dome_top - hilum_v), 0, 1)
        lobe = np.clip((edge_u - su) / edge + 0.5, 0.0, 1.0) * (v > hilum_v) * (su > 0.03)
    region = lobe * thorax * (1.0 - fields["below"])
    layers.extra += q["density"] * region * (0.8 + 0.2 * lung)
    layers.markings *= 1.0 - 0.7 * region
    layers.air *= 1.0 + 0.1 * lung * (1.0 - region)
    return (region > 0.5) & (thorax > 0.5)
