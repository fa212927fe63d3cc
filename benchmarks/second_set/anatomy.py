"""Normal chest anatomy of the second synthetic set as soft fields on a pixel grid.

Everything is drawn in a patient frame ``(u, v)``: ``u`` to the image right (the patient's left), ``v``
downwards, about ``[-1, 1]`` across the thorax. The image grid maps to it through the patient's position,
rotation (+-5 degrees) and size (:class:`Grid`).

The model differs from the built-in generator (``bundle/scripts/synthetic.py``): each lung field is bounded by
a lateral border ``x = apex + (width - apex) * t**k`` (``t`` the fraction of the way from the apex to the
costophrenic angle) with a low-frequency wobble, a medial border given by the mediastinum (with aortic knob)
and the heart, and a hemidiaphragm made of two parabolas meeting at the dome peak; the heart is a tilted
superellipse with different left and right half-widths; ribs are tube profiles along parabolic posterior arcs
and straight anterior arcs; clavicles are S-curves; the spine is a column of vertebral bodies; breasts are
soft-edged half-discs over the lower zones. Fields are float32 ``H x W`` arrays in ``[0, 1]`` (soft
indicators) unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "NORMAL_CTR",
    "Anatomy",
    "Grid",
    "anatomy_fields",
    "body_half_width",
    "lung_borders",
    "rib_layer",
    "sample_anatomy",
]

NORMAL_CTR: tuple[float, float] = (0.40, 0.50)


@dataclass(frozen=True)
class Anatomy:
    """Normal anatomy of one patient (lengths in the patient frame; ``side`` +1 = image right).

    ``lung_*`` tuples hold (image-left, image-right) values. ``ctr`` is the cardiothoracic ratio: heart span
    over the internal thoracic width (twice the mean lateral lung border at its widest).
    """

    shift: tuple[float, float]
    rotation: float
    scale: float
    body_width: float
    neck_width: float
    shoulder_level: float
    apex_level: tuple[float, float]
    apex_x: tuple[float, float]
    lung_width: tuple[float, float]
    lung_power: tuple[float, float]
    costophrenic: tuple[float, float]
    dome_height: tuple[float, float]
    dome_peak: tuple[float, float]
    wobble: tuple[float, float, float, float]
    mediastinum: float
    knob: float
    ctr: float
    heart_left_share: float
    heart_height: float
    heart_tilt: float
    heart_power: float
    rib_first: float
    rib_spacing: float
    rib_growth: float
    rib_thickness: float
    rib_drop: float
    anterior_slope: float
    clavicle_level: float
    breast: float
    breast_level: float
    gastric_bubble: float
    texture_seed: int

    @property
    def thoracic_half_width(self) -> float:
        """Half of the internal thoracic width (mean of the two lungs' widest lateral extent)."""
        return 0.5 * (self.lung_width[0] + self.lung_width[1])

    @property
    def heart_widths(self) -> tuple[float, float]:
        """Half-widths of the heart to the image left (patient right) and image right (patient left)."""
        span = 2.0 * self.ctr * self.thoracic_half_width
        return span * (1.0 - self.heart_left_share), span * self.heart_left_share


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's normal anatomy."""

    def uni(low: float, high: float) -> float:
        return float(rng.uniform(low, high))

    def pair(low: float, high: float, spread: float) -> tuple[float, float]:
        base = uni(low, high)
        return base + uni(-spread, spread), base + uni(-spread, spread)

    cp_right = uni(0.40, 0.56)
    return Anatomy(
        shift=(uni(-0.06, 0.06), uni(-0.07, 0.05)),
        rotation=float(np.deg2rad(rng.uniform(-5.0, 5.0))),
        scale=uni(0.80, 1.02),
        body_width=uni(0.84, 0.98),
        neck_width=uni(0.20, 0.28),
        shoulder_level=uni(-0.86, -0.74),
        apex_level=pair(-0.76, -0.66, 0.02),
        apex_x=pair(0.17, 0.23, 0.015),
        lung_width=pair(0.68, 0.78, 0.02),
        lung_power=pair(0.32, 0.48, 0.04),
        costophrenic=(cp_right, cp_right + uni(0.0, 0.06)),
        dome_height=pair(0.10, 0.20, 0.02),
        dome_peak=pair(0.35, 0.50, 0.03),
        wobble=tuple(float(x) for x in rng.uniform(-1.0, 1.0, 4)),
        mediastinum=uni(0.085, 0.12),
        knob=uni(0.03, 0.07),
        ctr=uni(*NORMAL_CTR),
        heart_left_share=uni(0.60, 0.70),
        heart_height=uni(0.40, 0.48),
        heart_tilt=uni(0.15, 0.35),
        heart_power=uni(2.0, 2.6),
        rib_first=uni(-0.80, -0.72),
        rib_spacing=uni(0.095, 0.115),
        rib_growth=uni(0.0, 0.012),
        rib_thickness=uni(0.024, 0.032),
        rib_drop=uni(0.30, 0.42),
        anterior_slope=uni(0.45, 0.65),
        clavicle_level=uni(-0.70, -0.62),
        breast=float(rng.uniform(0.6, 1.0)) if rng.uniform() < 0.45 else 0.0,
        breast_level=uni(0.15, 0.30),
        gastric_bubble=uni(0.5, 1.0) if rng.uniform() < 0.6 else 0.0,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


@dataclass
class Grid:
    """Pixel grid (``size x size``) of one render and its patient-frame coordinates ``u``, ``v`` (float32)."""

    anatomy: Anatomy
    size: int
    u: np.ndarray = field(init=False)
    v: np.ndarray = field(init=False)
    x: np.ndarray = field(init=False)
    y: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        a = self.anatomy
        c = ((np.arange(self.size, dtype=np.float32) + 0.5) * (2.0 / self.size) - 1.0).astype(np.float32)
        self.y, self.x = np.meshgrid(c, c, indexing="ij")
        dx, dy = self.x - a.shift[0], self.y - a.shift[1]
        cos, sin = np.float32(np.cos(a.rotation)), np.float32(np.sin(a.rotation))
        self.u = (cos * dx + sin * dy) / np.float32(a.scale)
        self.v = (-sin * dx + cos * dy) / np.float32(a.scale)

    @property
    def edge(self) -> float:
        """Soft-edge width: about 1.2 pixels in patient units."""
        return 2.4 / (self.size * self.anatomy.scale)

    def to_pixels(self, points: np.ndarray, factor: int = 1) -> np.ndarray:
        """(K, 2) patient ``(u, v)`` -> (K, 2) pixel ``(x, y)`` of a grid ``factor`` times finer."""
        a = self.anatomy
        cos, sin = np.cos(a.rotation), np.sin(a.rotation)
        x = a.shift[0] + a.scale * (cos * points[:, 0] - sin * points[:, 1])
        y = a.shift[1] + a.scale * (sin * points[:, 0] + cos * points[:, 1])
        return np.stack([x + 1.0, y + 1.0], axis=1) * (self.size * factor / 2.0)


def _soft(distance: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of ``distance > 0`` (positive inside) with a ramp of width ``edge``."""
    return np.clip(distance / edge + 0.5, 0.0, 1.0).astype(np.float32)


def _heart_half_extent(a: Anatomy, v: np.ndarray, side: int, widths: tuple[float, float] | None = None) -> np.ndarray:
    """Horizontal distance from the midline to the heart border on ``side`` at height ``v`` (0 above/below)."""
    w_left, w_right = widths or a.heart_widths
    width = w_right if side > 0 else w_left
    center_v = _heart_center_v(a)
    t = np.clip(np.abs(v - center_v) / a.heart_height, 0.0, 1.0)
    profile = (1.0 - t**a.heart_power) ** (1.0 / a.heart_power)
    # the tilt moves the apex down and out on the patient's left: the heart leans to the image right
    lean = a.heart_tilt * (v - center_v) if side > 0 else -0.3 * a.heart_tilt * (v - center_v)
    return np.where(np.abs(v - center_v) < a.heart_height, width * profile + lean * profile, 0.0).astype(np.float32)


def _heart_center_v(a: Anatomy) -> float:
    return min(a.costophrenic) - max(a.dome_height) + 0.02


def lung_borders(a: Anatomy, v: np.ndarray, side: int, heart_widths: tuple[float, float] | None = None) -> dict:
    """Lateral and medial borders (distance from the midline) and apex of the lung on ``side`` at height ``v``."""
    i = int(side > 0)
    apex_v, apex_x, width = a.apex_level[i], a.apex_x[i], a.lung_width[i]
    t = np.clip((v - apex_v) / (a.costophrenic[i] - apex_v), 0.0, 1.0)
    wob = a.wobble
    lateral = apex_x + (width - apex_x) * t ** a.lung_power[i]
    lateral = lateral + 0.015 * (wob[2 * i] * np.sin(np.pi * t) + wob[2 * i + 1] * np.sin(2.0 * np.pi * t))
    knob = a.knob * np.exp(-(((v + 0.36) / 0.07) ** 2)) if side > 0 else 0.0
    widen = a.mediastinum * (1.0 + 0.25 * np.clip(v + 0.4, 0.0, 1.0)) + knob
    apical = apex_x - (apex_x - widen) * np.clip(t / 0.22, 0.0, 1.0) ** 0.5
    medial = np.maximum(np.maximum(widen, apical), _heart_half_extent(a, v, side, heart_widths))
    return {"lateral": lateral.astype(np.float32), "medial": medial.astype(np.float32), "t": t}


def _diaphragm(a: Anatomy, u: np.ndarray, side: int) -> np.ndarray:
    """Height ``v`` of the hemidiaphragm on ``side`` at ``u``: two parabolas meeting at the dome peak."""
    i = int(side > 0)
    su = side * u
    peak_x = a.dome_peak[i] * a.lung_width[i]
    top = a.costophrenic[i] - a.dome_height[i]
    lateral = top + a.dome_height[i] * np.clip((su - peak_x) / (a.lung_width[i] - peak_x), 0.0, None) ** 2
    medial = top + 0.35 * a.dome_height[i] * np.clip((peak_x - su) / peak_x, 0.0, None) ** 2
    return np.where(su > peak_x, lateral, medial).astype(np.float32)


def body_half_width(a: Anatomy, v: np.ndarray) -> np.ndarray:
    """Half-width of the body outline at height ``v``: neck, sloping shoulders, chest wall, flank."""
    shoulder = np.clip((v - a.shoulder_level) / 0.3, 0.0, 1.0)
    width = a.neck_width + (a.body_width - a.neck_width) * np.sin(0.5 * np.pi * shoulder) ** 0.6
    return (width - 0.04 * np.clip(v - 0.5, 0.0, None)).astype(np.float32)


def anatomy_fields(a: Anatomy, grid: Grid, heart_widths: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Soft fields (``H x W`` float32 in [0, 1]) of the anatomy on ``grid``.

    Keys: ``body``, ``lung_left`` / ``lung_right`` (image sides), ``lung_depth_left`` / ``_right`` (air
    thickness, 1 centrally, less at the rim), ``heart``, ``mediastinum``, ``below`` (under the
    hemidiaphragms, inside the chest wall), ``thorax`` (inside the rib cage above the diaphragm), and the signed horizontal
    distances ``lateral_left`` / ``_right`` to the lateral lung borders (positive inside).
    ``heart_widths`` overrides the heart's half-widths (cardiomegaly).
    """
    u, v, edge = grid.u, grid.v, grid.edge
    out: dict[str, np.ndarray] = {}
    half = body_half_width(a, v)
    out["body"] = _soft(half - np.abs(u), 2 * edge) * _soft(v + 1.3, edge)
    below = np.zeros_like(u)
    thorax = np.zeros_like(u)
    for side, name in ((-1, "left"), (1, "right")):
        b = lung_borders(a, v, side, heart_widths)
        su = side * u
        dia = _diaphragm(a, u, side)
        i = int(side > 0)
        lateral = b["lateral"] - su
        inside = np.minimum.reduce([lateral, su - b["medial"], dia - v, v - a.apex_level[i]])
        lung = _soft(inside, edge) * (su > 0)
        out[f"lung_{name}"] = lung
        out[f"lateral_{name}"] = lateral
        out[f"lung_depth_{name}"] = (0.72 + 0.28 * np.clip(inside / 0.12, 0.0, 1.0)).astype(np.float32)
        inner = np.clip((b["lateral"] + 0.06 - su) / 0.1, 0.0, 1.0)  # abdomen inside the chest wall
        below = np.maximum(below, _soft(v - dia, 2 * edge) * inner * (su >= 0))
        cage = np.minimum.reduce([b["lateral"] + 0.03 - su, dia - v, v - a.apex_level[i] + 0.03])
        thorax = np.maximum(thorax, _soft(cage, edge) * (su >= 0))
    out["below"] = below
    out["thorax"] = thorax
    heart_right = _heart_half_extent(a, v, 1, heart_widths)
    heart_left = _heart_half_extent(a, v, -1, heart_widths)
    heart_extent = np.where(u > 0, heart_right, heart_left)
    out["heart"] = _soft(heart_extent - np.abs(u), edge) * (heart_extent > 0) * (1.0 - below)
    knob = a.knob * np.exp(-(((v + 0.36) / 0.07) ** 2)) * (u > 0)
    widen = a.mediastinum * (1.0 + 0.25 * np.clip(v + 0.4, 0.0, 1.0)) + knob
    out["mediastinum"] = _soft(widen - np.abs(u), edge) * _soft(v + 0.95, edge) * (1.0 - below)
    return out


def _tube(distance: np.ndarray, thickness: float) -> np.ndarray:
    """Projected density across a hollow bone of half-thickness ``thickness``: bright cortex, lighter marrow."""
    outer = np.sqrt(np.clip(1.0 - (distance / thickness) ** 2, 0.0, 1.0))
    inner = np.sqrt(np.clip(1.0 - (distance / (0.7 * thickness)) ** 2, 0.0, 1.0))
    return outer - 0.55 * inner


def rib_layer(a: Anatomy, grid: Grid) -> dict[str, np.ndarray]:
    """Bones as ``H x W`` float32 densities: ``ribs`` (posterior arcs strong, anterior arcs faint), ``clavicles``
    and ``spine`` (vertebral bodies with darker disc spaces)."""
    u, v = grid.u, grid.v
    ribs = np.zeros_like(u)
    for side in (-1, 1):
        i = int(side > 0)
        su = side * u
        width = a.lung_width[i] + 0.04
        for k in range(11):
            v0 = a.rib_first + k * (a.rib_spacing + k * a.rib_growth * 0.5)
            thick = a.rib_thickness * (0.85 + 0.03 * k)
            # posterior arc: from the spine up a little, then down to the lateral chest wall
            s = np.clip((su - 0.05) / (width - 0.05), 0.0, 1.0)
            centre = v0 - 0.06 * s + a.rib_drop * s**2
            slope = (-0.06 + 2.0 * a.rib_drop * s) / (width - 0.05)
            dist = np.abs(v - centre) / np.sqrt(1.0 + slope**2)
            span = (su > 0.04) & (su < width + 0.02)
            ribs += np.where(span, _tube(dist, thick), 0.0) * np.clip((width + 0.02 - su) / 0.05, 0.0, 1.0)
            # anterior arc: from the lateral end of the posterior arc down and in towards the sternum
            lateral_v = v0 - 0.06 + a.rib_drop
            centre_a = lateral_v + a.anterior_slope * (width - su) - 0.25 * (width - su) ** 2
            dist_a = np.abs(v - centre_a) / np.sqrt(1.0 + a.anterior_slope**2)
            fade = np.clip((su - 0.22) / 0.25, 0.0, 1.0) * (su < width)
            ribs += 0.45 * _tube(dist_a, 0.8 * thick) * fade
    clav = np.zeros_like(u)
    for side in (-1, 1):
        su = side * u
        s = np.clip((su - 0.06) / 0.55, 0.0, 1.0)
        centre = a.clavicle_level - 0.14 * s + 0.05 * np.sin(2.0 * np.pi * s)
        clav += np.where((su > 0.05) & (su < 0.64), _tube(np.abs(v - centre), 0.03), 0.0)
    phase = np.mod((v - a.rib_first) / (a.rib_spacing * 0.85), 1.0)
    bodies = 0.75 + 0.25 * np.clip(np.abs(phase - 0.5) * 6.0 - 2.0, 0.0, 1.0) * -1.0
    spine = np.sqrt(np.clip(1.0 - (u / 0.075) ** 2, 0.0, 1.0)) * bodies * (v > -1.1)
    return {"ribs": ribs.astype(np.float32), "clavicles": clav.astype(np.float32), "spine": spine.astype(np.float32)}
