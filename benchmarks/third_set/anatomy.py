"""3-D thorax phantom of the third set: implicit shapes evaluated at any patient coordinates.

Every shape function takes coordinate arrays ``x, y, z`` (units, see :mod:`.geometry`; any equal or
broadcastable shapes: a voxel grid or a list of points) and returns an occupancy in ``[0, 1]`` of that shape,
with edges softened over about one voxel (``EDGE`` units) so projections are anti-aliased.

Structures: body (elliptic cylinder with fat layer, neck above the shoulders), rib cage
(elliptic cross-section narrowing towards the apex), lungs (inside the cage, above the hemidiaphragm
paraboloids, outside the mediastinum, heart, aorta and spine), heart (rotated ellipsoid resting on the left
dome), aorta (ascending cylinder, arch torus, descending cylinder), trachea and main bronchi (air tubes),
vertebral column (stacked cylinders with discs, spinous processes), ribs (elliptic tubes with cortex and
marrow following the cage, sloping down anteriorly, cartilage anteriorly), clavicles, scapulae, gastric bubble.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["Anatomy", "sample_anatomy", "soft", "taper", "cage_radius", "dome_height", "lung_occupancy",
           "heart_occupancy", "heart_x_extent", "EDGE"]

EDGE = 0.02  # width (units) over which an occupancy goes from 1 to 0


@dataclass(frozen=True)
class Anatomy:
    """Parameters of one patient (units as in :mod:`.geometry`; angles in radians)."""

    cage_a: float  # half-width of the rib cage at its widest
    cage_b: float  # half-depth of the rib cage
    cage_top: float  # height of the cage apex (first rib)
    cage_widest: float  # height at which the cage is widest
    fat: float  # soft tissue outside the cage
    shoulder: float  # height of the shoulders (neck above)
    dome_peak: tuple[float, float]  # dome heights (right, left)
    dome_x: float  # lateral offset of each dome peak
    dome_curve: float  # curvature of the dome paraboloids
    lung_density: float  # attenuation of aerated lung relative to soft tissue
    mediastinum: float  # half-width of the mediastinum at the hila
    heart_centre: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    heart_angles: tuple[float, float]  # tilt about y (long axis to the left and down), twist about z
    aorta_radius: float
    arch_height: float
    spine_y: float
    vertebra: float  # vertebral height (body + disc)
    rib_top: float  # height of the first posterior rib
    rib_spacing: float
    rib_drop: float  # fall of a rib from its posterior to its anterior end
    n_ribs: int
    bubble: float  # gastric bubble radius, 0 for none
    hilum_z: float
    vessel_seed: int  # seed of the vessel trees


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient; inspiration depth sets the domes (higher in shallow inspiration) and lung density."""
    cage_a = rng.uniform(0.70, 0.86)
    inspiration = rng.uniform(0.0, 1.0)  # 0 shallow, 1 deep
    right_dome = -0.30 - 0.22 * inspiration + rng.uniform(-0.03, 0.03)
    left_dome = right_dome - rng.uniform(0.02, 0.09)
    mediastinum = rng.uniform(0.09, 0.12)
    heart_axes = (rng.uniform(0.25, 0.30), rng.uniform(0.26, 0.32), rng.uniform(0.20, 0.25))
    heart_angles = (rng.uniform(0.35, 0.70), rng.uniform(-0.3, 0.3))
    heart_centre = (rng.uniform(0.06, 0.12), rng.uniform(0.06, 0.14), left_dome + rng.uniform(0.13, 0.18))
    anatomy = Anatomy(
        cage_a=cage_a,
        cage_b=cage_a * rng.uniform(0.55, 0.68),
        cage_top=rng.uniform(0.72, 0.82),
        cage_widest=rng.uniform(-0.35, -0.15),
        fat=rng.uniform(0.04, 0.16),
        shoulder=rng.uniform(0.80, 0.92),
        dome_peak=(right_dome, left_dome),
        dome_x=rng.uniform(0.25, 0.40),
        dome_curve=rng.uniform(0.9, 1.4),
        lung_density=0.30 - 0.08 * inspiration + rng.uniform(-0.02, 0.02),
        mediastinum=mediastinum,
        heart_centre=heart_centre,
        heart_axes=heart_axes,
        heart_angles=heart_angles,
        aorta_radius=rng.uniform(0.045, 0.065),
        arch_height=rng.uniform(0.22, 0.34),
        spine_y=-cage_a * rng.uniform(0.42, 0.50),
        vertebra=rng.uniform(0.11, 0.13),
        rib_top=rng.uniform(0.70, 0.78),
        rib_spacing=rng.uniform(0.12, 0.145),
        rib_drop=rng.uniform(0.55, 0.75),
        n_ribs=int(rng.integers(10, 13)),
        bubble=rng.uniform(0.06, 0.11) if rng.uniform() < 0.5 else 0.0,
        hilum_z=rng.uniform(0.02, 0.12),
        vessel_seed=int(rng.integers(2**31)),
    )
    # heart size from a cardiothoracic ratio (heart width / inner thoracic width) in the normal range
    scale = rng.uniform(0.40, 0.50) * 0.95 * cage_a / heart_x_extent(anatomy)
    return replace(anatomy, heart_axes=tuple(v * scale for v in heart_axes))


def soft(signed_distance: np.ndarray, edge: float = EDGE) -> np.ndarray:
    """Occupancy from a signed distance (negative inside): 1 inside, 0 outside, linear over ``edge`` units."""
    return np.clip(0.5 - signed_distance / edge, 0.0, 1.0).astype(np.float32)


def taper(a: Anatomy, z: np.ndarray) -> np.ndarray:
    """Cage half-width factor at height ``z``: 1 at and below the widest level, 0.15 at the apex."""
    t = np.clip((z - a.cage_widest) / (a.cage_top - a.cage_widest), 0.0, 1.0)
    return np.sqrt(np.clip(1.0 - t**2.2, 0.0225, 1.0))


def cage_radius(a: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Elliptic radius relative to the inner rib cage at height ``z`` (1 on the ribs' inner surface)."""
    t = taper(a, z)
    return np.sqrt((x / (a.cage_a * t)) ** 2 + (y / (a.cage_b * np.sqrt(t))) ** 2)


def dome_height(a: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the hemidiaphragm under ``(x, y)`` (right dome for ``x < 0``)."""
    peak = np.where(x < 0, a.dome_peak[0], a.dome_peak[1])
    return peak - a.dome_curve * ((np.abs(x) - a.dome_x) ** 2 + 0.8 * (y - 0.05) ** 2)


def body_occupancy(a: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Soft tissue of the body: cage plus fat below the shoulders, a neck above."""
    neck = 1.0 / (1.0 + np.exp(-(z - a.shoulder) / 0.03))
    half_x = (a.cage_a + a.fat + 0.08) * (1.0 - neck) + 0.30 * neck
    half_y = (a.cage_b + a.fat) * (1.0 - neck) + 0.28 * neck
    r = np.sqrt((x / half_x) ** 2 + (y / half_y) ** 2)
    return soft((r - 1.0) * half_y)


def _rotation(a: Anatomy) -> np.ndarray:
    """Rotation taking patient axes to the heart's own axes (tilt about y, then twist about z)."""
    t, w = a.heart_angles
    tilt = np.array([[np.cos(t), 0.0, np.sin(t)], [0.0, 1.0, 0.0], [-np.sin(t), 0.0, np.cos(t)]])
    twist = np.array([[np.cos(w), np.sin(w), 0.0], [-np.sin(w), np.cos(w), 0.0], [0.0, 0.0, 1.0]])
    return tilt @ twist


def heart_occupancy(a: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """Heart ellipsoid (``grow`` units added to every semi-axis)."""
    rot = _rotation(a).tolist()
    d = (x - a.heart_centre[0], y - a.heart_centre[1], z - a.heart_centre[2])
    r2 = 0.0
    for i in range(3):
        q = rot[i][0] * d[0] + rot[i][1] * d[1] + rot[i][2] * d[2]
        r2 = r2 + (q / (a.heart_axes[i] + grow)) ** 2
    return soft((np.sqrt(r2) - 1.0) * (min(a.heart_axes) + grow))


def heart_x_extent(a: Anatomy) -> float:
    """Half the patient-x extent of the heart ellipsoid (units)."""
    rot = _rotation(a)
    return float(np.sqrt(sum((rot[i, 0] * a.heart_axes[i]) ** 2 for i in range(3))))


def _segment_distance(x, y, z, p0, p1):
    """Distance (units) of points from the segment ``p0 -> p1`` (float32 for float32 coordinates)."""
    p0 = [float(v) for v in p0]
    d = [float(b) - a for a, b in zip(p0, p1)]
    dx, dy, dz = x - p0[0], y - p0[1], z - p0[2]
    t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / (d[0] ** 2 + d[1] ** 2 + d[2] ** 2), 0.0, 1.0)
    return np.sqrt((dx - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dz - t * d[2]) ** 2)


def aorta_occupancy(a: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Ascending aorta (right of the midline, anterior), arch (torus in an oblique plane), descending aorta
    (left of the spine, down to the domes)."""
    r = a.aorta_radius
    top = a.heart_centre[2] + a.arch_height + 0.2
    centre = (0.02, -0.02, top - 0.13)
    ascending = _segment_distance(x, y, z, (-0.06, 0.11, a.heart_centre[2]), (-0.06, 0.11, centre[2]))
    descending = _segment_distance(x, y, z, (0.10, a.spine_y + 0.14, centre[2]), (0.10, a.spine_y + 0.14, -0.8))
    # the arch: a half circle through the ends of both tubes, above their top
    u = np.array([0.16, a.spine_y + 0.14 - 0.11, 0.0])
    radius = float(np.linalg.norm(u)) / 2.0
    u = (u / np.linalg.norm(u)).tolist()
    mid = [0.02, (0.11 + a.spine_y + 0.14) / 2.0, float(centre[2])]
    dx, dy, dz = x - mid[0], y - mid[1], z - mid[2]
    along = dx * u[0] + dy * u[1] + dz * u[2]
    in_plane = np.sqrt(along**2 + np.maximum(dz, 0.0) ** 2)
    off_plane = np.sqrt(np.maximum(dx**2 + dy**2 + dz**2 - along**2 - dz**2, 0.0))
    arch = np.where(dz > 0, np.sqrt((in_plane - radius) ** 2 + off_plane**2), 1.0)
    return soft(np.minimum(np.minimum(ascending, descending), arch) - r)


def airway_occupancy(a: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Trachea from the neck to the carina and both main bronchi to the hila (air)."""
    carina = (0.0, 0.0, a.hilum_z + 0.12)
    trachea = _segment_distance(x, y, z, (0.0, 0.02, 1.3), carina) - 0.035
    right = _segment_distance(x, y, z, carina, (-a.mediastinum - 0.04, -0.02, a.hilum_z + 0.04)) - 0.024
    left = _segment_distance(x, y, z, carina, (a.mediastinum + 0.04, -0.02, a.hilum_z)) - 0.022
    return soft(np.minimum(trachea, np.minimum(right, left)))


def mediastinum_halfwidth(a: Anatomy, z: np.ndarray) -> np.ndarray:
    """Half-width of the central soft-tissue column (narrower above the arch)."""
    return a.mediastinum - 0.03 * np.clip((z - a.hilum_z) / 0.4, 0.0, 1.0)


def lung_occupancy(a: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Both lungs: inside the cage, above the domes, below the apex, outside mediastinum, heart, aorta, spine."""
    inside = soft((cage_radius(a, x, y, z) - 0.95) * a.cage_b)
    above = soft(dome_height(a, x, y) - z)
    below = soft(z - (a.cage_top - 0.04))
    lateral = soft(mediastinum_halfwidth(a, z) - np.abs(x + 0.02 * np.sign(x)))
    spine = soft(0.16 - np.sqrt(x**2 + (y - a.spine_y) ** 2))
    occupancy = inside * above * below * lateral * spine
    return occupancy * (1.0 - heart_occupancy(a, x, y, z, grow=0.015)) * (1.0 - aorta_occupancy(a, x, y, z))


def bone_density(a: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Attenuation added by bone above soft tissue (1 = soft tissue): ribs, spine, clavicles, scapulae."""
    return _ribs(a, x, y, z) + _spine(a, x, y, z) + _shoulder_girdle(a, x, y, z)


def _ribs(a: Anatomy, x, y, z):
    """Ribs: elliptic tubes just outside the cage, falling ``rib_drop`` from back to front; cortex denser than
    marrow; the anterior ends are cartilage (faint)."""
    t = taper(a, z)
    half_x, half_y = a.cage_a * t, a.cage_b * np.sqrt(t)
    sin_theta = (y / half_y) / np.maximum(np.sqrt((x / half_x) ** 2 + (y / half_y) ** 2), 1e-6)
    around = np.arccos(np.clip(-sin_theta, -1.0, 1.0)) / np.pi  # 0 at the spine, 1 at the sternum
    path = -a.rib_drop * around**0.8  # posterior arcs fall laterally, anterior arcs fall medially
    phase = (a.rib_top - (z - path)) / a.rib_spacing
    k = np.clip(np.round(phase), 0, a.n_ribs - 1)
    dz = (phase - k) * a.rib_spacing
    dr = (cage_radius(a, x, y, z) - 1.01) * np.minimum(half_x, half_y * 1.4)
    e = np.sqrt((dz / 0.032) ** 2 + (dr / 0.022) ** 2)
    tube = soft((e - 1.0) * 0.022, 0.012)
    marrow = soft((e - 0.6) * 0.022, 0.012)
    bone = 1.3 * tube - 0.6 * marrow
    cartilage = (sin_theta > 0.55) & (np.abs(x) < 0.45 * a.cage_a)
    bone = np.where(cartilage, 0.15 * tube, bone)
    return bone * (np.abs(x) > 0.07)


def _spine(a: Anatomy, x, y, z):
    """Vertebral bodies (cylinders with disc gaps) and spinous processes behind them."""
    level = np.mod(z / a.vertebra, 1.0)
    body = soft(np.sqrt(x**2 + (y - a.spine_y) ** 2) - 0.085) * soft(np.abs(level - 0.55) * a.vertebra - 0.042, 0.01)
    process = soft(np.sqrt(x**2 + (y - a.spine_y + 0.16) ** 2) - 0.025) * soft(np.abs(level - 0.3) * a.vertebra - 0.03)
    pedicles = soft(np.sqrt((np.abs(x) - 0.06) ** 2 + (y - a.spine_y + 0.08) ** 2) - 0.022)
    return 0.6 * body + 0.5 * process + 0.5 * pedicles


def _shoulder_girdle(a: Anatomy, x, y, z):
    """Clavicles (tubes from the sternal notch out to the shoulders) and scapulae (thin plates behind the cage)."""
    notch = a.cage_top - 0.02
    total = 0.0
    for side in (-1.0, 1.0):
        d = np.minimum(
            _segment_distance(x, y, z, (side * 0.07, a.cage_b * 0.8, notch), (side * 0.35, a.cage_b * 0.6, notch + 0.02)),
            _segment_distance(x, y, z, (side * 0.35, a.cage_b * 0.6, notch + 0.02), (side * (a.cage_a + 0.02), 0.0, notch + 0.1)),
        )
        e = d / 0.03
        total = total + 1.2 * soft((e - 1.0) * 0.03, 0.012) - 0.5 * soft((e - 0.55) * 0.03, 0.012)
        sx, sz = side * (a.cage_a * 0.72), a.cage_top - 0.30
        plate = np.sqrt(((x - sx) / 0.24) ** 2 + ((z - sz) / 0.34) ** 2 + ((y + a.cage_b + 0.05) / 0.03) ** 2)
        total = total + 0.8 * soft((plate - 1.0) * 0.03, 0.012)
    return total


def air_occupancy(a: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Air inside the body outside the lungs: airways and the gastric bubble under the left dome."""
    air = airway_occupancy(a, x, y, z)
    if a.bubble > 0:
        top = a.dome_peak[1] - 0.05
        d = np.sqrt(((x - 0.32) / (1.4 * a.bubble)) ** 2 + ((y - 0.05) / a.bubble) ** 2 + ((z - top + a.bubble) / a.bubble) ** 2)
        air = np.maximum(air, soft((d - 1.0) * a.bubble) * (z < top))
    return air
