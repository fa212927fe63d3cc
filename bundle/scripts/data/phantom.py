"""Synthetic PA chest radiographs with and without findings, with the mask of each finding.

The phantom is built in a patient-local frame ``(u, v)`` spanning about ``[-1, 1]`` (``u`` to the image
right, which is the patient's left; ``v`` downwards) as a projected attenuation map: soft-tissue body,
air-filled lung fields with vessels and parenchymal texture, heart, mediastinum and aortic knob, trachea and
main bronchi, spine, posterior and anterior ribs, clavicles, hemidiaphragms with the abdomen and a gastric
air bubble below them.  The attenuation goes through an exposure curve (``1 - exp(-gain * A)``), a gamma and
a window, and gets a heel-effect gradient and quantum noise, so the result looks like a PA film as displayed:
lungs dark, bones, heart and mediastinum bright.

Normal anatomy varies between "patients" (:class:`Patient`, drawn by :func:`sample_patient`): position,
rotation, magnification, body and lung size, diaphragm levels, heart size (cardiothoracic ratio in
:data:`NORMAL_CTR_RANGE`), rib spacing and thickness, vessels, exposure and noise.  A finding
(:class:`Finding`, drawn by :func:`sample_finding`) is drawn separately from the patient, so the same patient
can be rendered with and without it (:func:`render_radiograph`).  Kinds (:data:`FINDINGS`):

- ``nodule``: a round, slightly lobulated soft-tissue opacity (a 2-4 cm nodule or mass) inside a lung field;
- ``consolidation``: a patchy airspace opacity of part of one lung with air bronchograms;
- ``effusion``: pleural fluid at one lung base with a lateral meniscus, blunting the costophrenic angle;
- ``pneumothorax``: one lung collapsed towards the hilum, an apical/lateral pleural air space without lung
  markings and a visible visceral pleural line;
- ``cardiomegaly``: a heart with a cardiothoracic ratio in :data:`CARDIOMEGALY_CTR_RANGE`, well above the
  normal range.

Masks mark the abnormal pixels: the nodule, the consolidated region, the fluid, the pleural air space, and
for cardiomegaly the (enlarged) cardiac silhouette.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "FINDINGS",
    "NORMAL_CTR_RANGE",
    "CARDIOMEGALY_CTR_RANGE",
    "Patient",
    "Finding",
    "sample_patient",
    "sample_finding",
    "render_radiograph",
    "anatomy_masks",
    "synthesize_radiograph",
]

FINDINGS: tuple[str, ...] = ("nodule", "consolidation", "effusion", "pneumothorax", "cardiomegaly")
NORMAL_CTR_RANGE: tuple[float, float] = (0.38, 0.48)
CARDIOMEGALY_CTR_RANGE: tuple[float, float] = (0.56, 0.64)

_NOISE_TILE_SEED = 20240601


# ----------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    """Normal anatomy and acquisition of one synthetic patient (lengths in the local frame, about [-1, 1]).

    ``shift_*``, ``rotation`` (radians) and ``scale`` place the patient-local frame in the image.  Each lung
    is an ellipse centred at ``(+-lung_center_x, lung_center_y)`` whose centre moves laterally by
    ``lung_flare`` per half-height downwards (narrow apex, wide base), cut by the mediastinum, the heart and
    the hemidiaphragm domes (dome tops at ``diaphragm_right`` / ``diaphragm_left``, patient sides).
    ``heart_ctr`` is the cardiothoracic ratio: the horizontal span of the heart over the internal thoracic
    width ``2 * thoracic_half_width``.  ``texture_seed`` fixes vessels, parenchymal texture and noise, so a
    render is a pure function of the parameters.
    """

    shift_x: float
    shift_y: float
    rotation: float
    scale: float
    body_half_width: float
    lung_center_x: float
    lung_center_y: float
    lung_half_width: float
    lung_half_height: float
    lung_flare: float
    diaphragm_right: float
    diaphragm_left: float
    heart_ctr: float
    heart_half_height: float
    heart_offset: float
    heart_shear: float
    mediastinum_half_width: float
    rib_top: float
    rib_spacing: float
    rib_thickness: float
    rib_density: float
    gastric_bubble: bool
    gain: float
    gamma: float
    black: float
    white: float
    heel: float
    noise_sigma: float
    texture_seed: int

    @property
    def thoracic_half_width(self) -> float:
        """Half of the internal thoracic width: the most lateral extent of a lung field."""
        return self.lung_center_x + float(np.hypot(self.lung_half_width, self.lung_flare))


@dataclass(frozen=True)
class Finding:
    """One abnormal finding in the patient-local frame.

    ``side`` is +1 for the image right (patient left) lung and -1 for the image left.  ``params`` holds the
    kind-specific numbers (see :func:`sample_finding`); ``seed`` fixes irregular shapes.
    """

    kind: str
    side: int
    params: dict[str, float] = field(default_factory=dict)
    seed: int = 0


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draw the normal anatomy and acquisition parameters of one patient."""

    def uni(low: float, high: float) -> float:
        return float(rng.uniform(low, high))

    diaphragm_right = uni(0.36, 0.48)
    return Patient(
        shift_x=uni(-0.08, 0.08),
        shift_y=uni(-0.08, 0.08),
        rotation=uni(-0.1, 0.1),
        scale=uni(0.84, 1.04),
        body_half_width=uni(0.86, 0.96),
        lung_center_x=uni(0.36, 0.40),
        lung_center_y=uni(0.0, 0.06),
        lung_half_width=uni(0.32, 0.37),
        lung_half_height=uni(0.74, 0.80),
        lung_flare=uni(0.08, 0.14),
        diaphragm_right=diaphragm_right,
        diaphragm_left=diaphragm_right + uni(0.02, 0.08),
        heart_ctr=uni(*NORMAL_CTR_RANGE),
        heart_half_height=uni(0.40, 0.48),
        heart_offset=uni(-0.03, 0.03),
        heart_shear=uni(0.12, 0.22),
        mediastinum_half_width=uni(0.09, 0.12),
        rib_top=uni(-0.80, -0.72),
        rib_spacing=uni(0.125, 0.15),
        rib_thickness=uni(0.016, 0.022),
        rib_density=uni(0.09, 0.14),
        gastric_bubble=bool(rng.uniform() < 0.7),
        gain=uni(0.95, 1.3),
        gamma=uni(1.1, 1.5),
        black=uni(0.0, 0.06),
        white=uni(0.92, 1.0),
        heel=uni(-0.04, 0.04),
        noise_sigma=uni(0.006, 0.018),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_finding(rng: np.random.Generator, patient: Patient, kind: str) -> Finding:
    """Draw a finding of ``kind`` (one of :data:`FINDINGS`) for ``patient``.

    ``params`` per kind: nodule ``u, v, radius, density, lobulation, phase``; consolidation ``u, v, radius,
    density``; effusion ``level, meniscus, density``; pneumothorax ``collapse, darkening``; cardiomegaly
    ``ctr, height_factor``.
    """
    if kind not in FINDINGS:
        raise ValueError(f"Unknown finding {kind!r}; expected one of {FINDINGS}.")
    side = int(rng.choice((-1, 1)))
    seed = int(rng.integers(0, 2**31 - 1))
    if kind == "nodule":
        radius = float(rng.uniform(0.06, 0.09))
        u, v = _point_in_lung(rng, patient, side, margin=radius * 1.3)
        params = {
            "u": u,
            "v": v,
            "radius": radius,
            "density": float(rng.uniform(0.28, 0.38)),
            "lobulation": float(rng.uniform(0.0, 0.12)),
            "phase": float(rng.uniform(0.0, 2 * np.pi)),
        }
    elif kind == "consolidation":
        u, v = _point_in_lung(rng, patient, side, margin=0.1)
        params = {"u": u, "v": v, "radius": float(rng.uniform(0.12, 0.18)), "density": float(rng.uniform(0.16, 0.28))}
    elif kind == "effusion":
        params = {
            "level": float(rng.uniform(0.18, 0.34)),
            "meniscus": float(rng.uniform(0.06, 0.14)),
            "density": float(rng.uniform(0.32, 0.46)),
        }
    elif kind == "pneumothorax":
        params = {"collapse": float(rng.uniform(0.65, 0.8)), "darkening": float(rng.uniform(0.06, 0.09))}
    else:
        params = {"ctr": float(rng.uniform(*CARDIOMEGALY_CTR_RANGE)), "height_factor": float(rng.uniform(1.05, 1.15))}
    return Finding(kind=kind, side=side, params=params, seed=seed)


# ----------------------------------------------------------------------------------------------------------
# Geometry (signed distances in the local frame; negative inside)
# ----------------------------------------------------------------------------------------------------------


def _ellipse_sdf(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    """First-order signed distance to the ellipse ``(x/a)^2 + (y/b)^2 = 1``."""
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    grad = np.sqrt((x / a**2) ** 2 + (y / b**2) ** 2) / np.maximum(r, 1e-6)
    return (r - 1.0) / np.maximum(grad, 1e-6)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _inside(sdf: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of ``sdf < 0`` with a linear ramp of width ``edge``."""
    return np.clip(0.5 - sdf / edge, 0.0, 1.0)


def _diaphragm(p: Patient, u: np.ndarray) -> np.ndarray:
    """Height ``v`` of the hemidiaphragm domes at ``u`` (image left = patient right dome)."""
    level = np.float32(p.diaphragm_right) + np.float32(p.diaphragm_left - p.diaphragm_right) * (u > 0)
    return level + 0.45 * (np.abs(u) - p.lung_center_x) ** 2


def _heart_geometry(p: Patient) -> tuple[float, float, float, float]:
    """Centre ``(u, v)`` and half-axes ``(a, b)`` of the sheared heart ellipse for ``p.heart_ctr``.

    The centre sits at the diaphragm, so the upper half shows; the shear tilts the apex to the patient's
    left.  The full horizontal span of the sheared ellipse is ``2 * heart_ctr * thoracic_half_width``.
    """
    half_span = p.heart_ctr * p.thoracic_half_width
    b = p.heart_half_height
    a = float(np.sqrt(half_span**2 - (p.heart_shear * b) ** 2))
    return half_span / 3.0 + p.heart_offset, 0.5 * (p.diaphragm_right + p.diaphragm_left) + 0.03, a, b


def _heart_sdf(p: Patient, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    cu, cv, a, b = _heart_geometry(p)
    return _ellipse_sdf(u - cu - p.heart_shear * (v - cv), v - cv, a, b)


def _mediastinum_sdf(p: Patient, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Superior mediastinum band with the aortic knob on the patient's left (image right)."""
    band = np.abs(u) - p.mediastinum_half_width * (1.0 + 0.3 * np.clip(v + 0.3, 0.0, 1.0))
    knob = _ellipse_sdf(u - p.mediastinum_half_width + 0.015, v + 0.33, 0.07, 0.06)
    return np.minimum(band, knob)


def _lung_envelope_sdf(p: Patient, u: np.ndarray, v: np.ndarray, side: int) -> np.ndarray:
    """The lung's outer ellipse (narrow apex, wide base) of one side."""
    center = p.lung_center_x + p.lung_flare * (v - p.lung_center_y) / p.lung_half_height
    return _ellipse_sdf(side * u - center, v - p.lung_center_y, p.lung_half_width, p.lung_half_height)


def _lung_sdf(p: Patient, u: np.ndarray, v: np.ndarray, side: int) -> np.ndarray:
    """Lung field of one side: its envelope above the dome, outside the mediastinum and the heart."""
    return np.maximum.reduce(
        [
            _lung_envelope_sdf(p, u, v, side),
            v - _diaphragm(p, u),
            -_mediastinum_sdf(p, u, v),
            -_heart_sdf(p, u, v),
            -side * u,
        ]
    )


def _point_in_lung(rng: np.random.Generator, patient: Patient, side: int, margin: float) -> tuple[float, float]:
    """A uniformly drawn point of the lung field at least ``margin`` from its border."""
    for _ in range(500):
        u = side * rng.uniform(0.1, patient.thoracic_half_width)
        v = rng.uniform(patient.lung_center_y - patient.lung_half_height, patient.diaphragm_left)
        if _lung_sdf(patient, np.asarray(u), np.asarray(v), side) < -margin:
            return float(u), float(v)
    raise RuntimeError("Could not place a finding inside the lung field.")


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """Pixel grid of one render in the patient-local frame (``u``, ``v``: size x size float32)."""

    patient: Patient
    size: int
    u: np.ndarray = field(init=False)
    v: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        p = self.patient
        c = (np.arange(self.size, dtype=np.float32) + 0.5) * np.float32(2.0 / self.size) - np.float32(1.0)
        y, x = np.meshgrid(c - np.float32(p.shift_y), c - np.float32(p.shift_x), indexing="ij")
        cos, sin = np.float32(np.cos(p.rotation)), np.float32(np.sin(p.rotation))
        self.u = (cos * x + sin * y) / np.float32(p.scale)
        self.v = (-sin * x + cos * y) / np.float32(p.scale)

    @property
    def edge(self) -> float:
        """Anti-aliasing width: 1.5 pixels in local units."""
        return 3.0 / (self.size * self.patient.scale)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """(K, 2) local ``(u, v)`` points -> (K, 2) ``(x, y)`` in pixel units, pixel ``i`` spanning ``[i, i+1)``."""
        p = self.patient
        cos, sin = np.cos(p.rotation), np.sin(p.rotation)
        x = p.shift_x + p.scale * (cos * points[:, 0] - sin * points[:, 1])
        y = p.shift_y + p.scale * (sin * points[:, 0] + cos * points[:, 1])
        return np.stack([x + 1.0, y + 1.0], axis=1) * (self.size / 2.0)


class _LineLayer:
    """Thin structures (bones, vessels, airways) drawn with Pillow at twice the resolution.

    Lines are collected by :meth:`polyline` and drawn by :meth:`result` (max-composited), box-downsampled
    and blurred: an anti-aliased layer with values in [0, 1].
    """

    _FACTOR = 2

    def __init__(self, frame: _Frame) -> None:
        self.frame = frame
        self._lines: list[tuple[np.ndarray, np.ndarray, int]] = []

    def polyline(self, points: np.ndarray, half_widths: np.ndarray | float, strength: float = 1.0) -> None:
        """Add the line through (K, 2) local points; ``half_widths`` per vertex (tapered) or one value."""
        points = np.asarray(points, dtype=np.float64)
        widths = np.broadcast_to(np.asarray(half_widths, dtype=np.float64), (len(points),))
        self._lines.append((points, widths, int(round(255 * strength))))

    def result(self, blur: float = 0.7) -> np.ndarray:
        """The layer at the frame's size (float32 H x W, [0, 1]), blurred by ``blur`` pixels."""
        size, f = self.frame.size, self._FACTOR
        canvas = Image.new("L", (f * size, f * size))
        draw = ImageDraw.Draw(canvas)
        if self._lines:
            xy = (self.frame.to_pixels(np.concatenate([q for q, _, _ in self._lines])) * f).tolist()
            px = np.concatenate([w for _, w, _ in self._lines]) * (self.frame.patient.scale * size * f)
            start = 0
            for points, widths, fill in self._lines:
                stop = start + len(points)
                if np.all(widths == widths[0]):
                    draw.line(xy[start:stop], fill=fill, width=max(int(round(px[start])), 1))
                else:
                    for k in range(start, stop - 1):
                        draw.line(xy[k : k + 2], fill=fill, width=max(int(round(0.5 * (px[k] + px[k + 1]))), 1))
                start = stop
        small = canvas.reduce(f).filter(ImageFilter.GaussianBlur(blur))
        return np.asarray(small).astype(np.float32) * np.float32(1.0 / 255.0)


@functools.lru_cache(maxsize=8)
def _noise_tile(size: int, low: float, high: float) -> np.ndarray:
    """Periodic unit-variance noise with power between ``low`` and ``high`` cycles per ``size`` pixels.

    The tile is ``2 * size`` square, drawn once from a fixed seed, and wrap-padded to ``3 * size`` so that any
    ``size`` window starting in its first ``2 * size`` rows and columns is a plain slice.
    """
    n = 2 * size
    spectrum = np.fft.rfft2(np.random.default_rng(_NOISE_TILE_SEED).standard_normal((n, n)))
    radius = np.sqrt(np.fft.fftfreq(n)[:, None] ** 2 + np.fft.rfftfreq(n)[None, :] ** 2) * size
    band = np.exp(-((radius / high) ** 2))
    if low > 0:
        band = band - np.exp(-((radius / low) ** 2))
    tile = np.fft.irfft2(spectrum * band, s=(n, n))
    tile = np.pad(((tile - tile.mean()) / tile.std()).astype(np.float32), ((0, size), (0, size)), mode="wrap")
    tile.flags.writeable = False  # shared by the cache
    return tile


def _bandpass_noise(rng: np.random.Generator, size: int, low: float, high: float) -> np.ndarray:
    """Unit-variance band-pass noise (size x size): a random window of :func:`_noise_tile`, randomly
    flipped, transposed and negated (cheap, and a pure function of ``rng``)."""
    row, col, flip, transpose, sign = rng.integers(0, (2 * size, 2 * size, 2, 2, 2))
    window = _noise_tile(size, low, high)[row : row + size, col : col + size]
    window = window[::-1] if flip else window
    window = window.T if transpose else window
    return -window if sign else window


def _bone_layer(frame: _Frame) -> np.ndarray:
    """Posterior ribs and clavicles, and the fainter anterior ribs (H x W, [0, 1])."""
    p = frame.patient
    bones = _LineLayer(frame)
    shape = np.array([0.0, 0.2, 0.38, 0.55, 0.72, 0.88, 1.0])
    drop = np.array([0.0, -0.045, -0.05, -0.02, 0.05, 0.15, 0.28])
    for i in range(10):
        top = p.rib_top + i * p.rib_spacing
        rel = np.clip((top + 0.12 - p.lung_center_y) / p.lung_half_height, -1.0, 1.0)
        center = p.lung_center_x + p.lung_flare * rel
        extent = center + (p.lung_half_width + 0.05) * np.sqrt(1.0 - 0.85 * rel**2)
        thickness = p.rib_thickness * (0.85 + 0.03 * i)
        lateral = 0.06 + shape * (extent - 0.06)
        for side in (-1, 1):
            bones.polyline(np.stack([side * lateral, top + drop], axis=1), thickness)
            front = np.stack(
                [
                    side * np.array([extent, 0.8 * extent, 0.55 * extent, 0.3]),
                    top + 0.28 + np.array([0.0, 0.1, 0.17, 0.22]),
                ],
                axis=1,
            )
            bones.polyline(front, np.array([1.0, 0.95, 0.85, 0.6]) * thickness, strength=0.45)
    clavicle = np.array([0.05, 0.25, 0.45, 0.62, 0.75])
    heights = p.rib_top + 0.1 + np.array([0.02, 0.0, -0.04, -0.08, -0.14])
    for side in (-1, 1):
        bones.polyline(np.stack([side * clavicle, heights], axis=1), 0.024)
    return bones.result()


def _vessel_layer(frame: _Frame, rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vessels branching from both hila (H x W, [0, 1])."""
    p = frame.patient
    layer = _LineLayer(frame)
    t = np.linspace(0.0, 1.0, 4)[:, None]
    for side in (-1, 1):
        hilum = np.array([side * (p.mediastinum_half_width + rng.uniform(0.05, 0.08)), rng.uniform(-0.12, -0.02)])
        for angle in np.linspace(-1.6, 1.1, 7) + rng.uniform(-0.15, 0.15, 7):
            length = rng.uniform(0.3, 0.55)
            direction = np.array([side * np.cos(angle), np.sin(angle)])
            bend = np.array([-direction[1], direction[0]]) * rng.uniform(-0.05, 0.05)
            layer.polyline(
                hilum + t * length * direction + np.sin(np.pi * t) * bend, np.array([0.012, 0.008, 0.005, 0.003])
            )
            for start in rng.uniform(0.3, 0.7, 2):
                origin = hilum + start * length * direction
                turn = rng.choice((-1, 1)) * rng.uniform(0.3, 0.6)
                rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
                layer.polyline(
                    np.stack([origin, origin + 0.45 * length * (rot @ direction)]), np.array([0.005, 0.0025])
                )
    return layer.result(blur=0.6)


def _airway_layer(frame: _Frame) -> np.ndarray:
    """Trachea and main bronchi (H x W, [0, 1])."""
    layer = _LineLayer(frame)
    carina = np.array([0.0, -0.28])
    layer.polyline(np.array([[0.0, -1.3], carina]), 0.024)
    for side in (-1, 1):
        layer.polyline(np.stack([carina, carina + [side * 0.13, 0.14]]), 0.014)
    return layer.result(blur=1.0)


def _spine_profile(frame: _Frame) -> np.ndarray:
    """Vertebral column with darker disc spaces and pedicles (H x W)."""
    p = frame.patient
    column = np.exp(-(((frame.u / 0.06) ** 2) ** 3))
    cycle = np.cos((2.0 * np.pi / p.rib_spacing) * (frame.v - p.rib_top - 0.5 * p.rib_spacing))
    discs = 0.8 + 0.2 * np.clip(3.0 * cycle, -1.0, 1.0)
    pedicles = np.exp(-(((np.abs(frame.u) - 0.04) / 0.012) ** 2)) * np.clip(cycle, 0.0, 1.0)
    return column * (discs + 0.35 * pedicles)


def _anatomy_fields(p: Patient, frame: _Frame) -> dict[str, np.ndarray]:
    """Soft indicators (H x W, [0, 1]) of the body, each lung, heart, mediastinum and below the diaphragm;
    ``body_half`` is the body's half-width per pixel and ``envelope_*`` the lungs' outer-ellipse distances."""
    u, v, edge = frame.u, frame.v, frame.edge
    neck = 0.25
    body_half = neck + (p.body_half_width - neck) * _smoothstep((v + 1.18) / 0.3)
    dome = _diaphragm(p, u)
    heart = _heart_sdf(p, u, v)
    mediastinum = _mediastinum_sdf(p, u, v)
    central = np.maximum(np.maximum(v - dome, -mediastinum), -heart)
    envelope_right = _lung_envelope_sdf(p, u, v, -1)
    envelope_left = _lung_envelope_sdf(p, u, v, 1)
    below = _inside(dome - v, 2.0 * edge)
    return {
        "body_half": body_half,
        "body": _inside(np.abs(u) - body_half, 2.0 * edge),
        "lung_right": _inside(np.maximum(np.maximum(envelope_right, central), u), 1.5 * edge),
        "lung_left": _inside(np.maximum(np.maximum(envelope_left, central), -u), 1.5 * edge),
        "envelope_right": envelope_right,
        "envelope_left": envelope_left,
        "heart": _inside(heart, 1.5 * edge) * (1.0 - below),
        "mediastinum": _inside(mediastinum, 2.0 * edge) * (1.0 - below),
        "below": below,
    }


def anatomy_masks(patient: Patient, size: int = 256) -> dict[str, np.ndarray]:
    """Boolean masks (size x size) of ``body``, ``lungs``, ``heart``, ``mediastinum`` and ``spine``."""
    frame = _Frame(patient, size)
    fields = _anatomy_fields(patient, frame)
    return {
        "body": fields["body"] > 0.5,
        "lungs": (fields["lung_right"] + fields["lung_left"]) > 0.5,
        "heart": fields["heart"] > 0.5,
        "mediastinum": fields["mediastinum"] > 0.5,
        "spine": (np.abs(frame.u) < 0.05) & (fields["body"] > 0.5),
    }


def _lung_depth(envelope: np.ndarray) -> np.ndarray:
    """Relative air thickness of a lung from its envelope distance: full centrally, 70% at the rim."""
    return 0.7 + 0.3 * np.clip(envelope * np.float32(-1.0 / 0.15), 0.0, 1.0)


def render_radiograph(
    patient: Patient, size: int = 256, finding: Finding | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``patient`` (optionally with ``finding``) as a displayed PA radiograph.

    Returns:
        image: float32 (size x size) in [0, 1], bright = dense.
        mask: bool (size x size), the abnormal pixels; all False without a finding.
    """
    if finding is not None and finding.kind == "cardiomegaly":
        height = patient.heart_half_height * finding.params["height_factor"]
        patient = replace(patient, heart_ctr=finding.params["ctr"], heart_half_height=height)
    p = patient
    frame = _Frame(p, size)
    u, v = frame.u, frame.v
    rng = np.random.default_rng(p.texture_seed)
    fields = _anatomy_fields(p, frame)
    lungs = fields["lung_right"] + fields["lung_left"]
    air = fields["lung_right"] * _lung_depth(fields["envelope_right"]) + fields["lung_left"] * _lung_depth(
        fields["envelope_left"]
    )
    markings = lungs * (0.12 * _vessel_layer(frame, rng) + 0.02 * _bandpass_noise(rng, size, 6.0, 40.0))
    extra = np.zeros((size, size), np.float32)
    mask = np.zeros((size, size), bool)
    if finding is not None:
        extra, markings, air, mask = _apply_finding(finding, p, frame, fields, extra, markings, air)

    body = fields["body"]
    thickness = np.sqrt(np.clip(1.0 - (u / fields["body_half"]) ** 2, 0.0, 1.0)) * body
    hila = sum(np.exp(-((u - s * (p.mediastinum_half_width + 0.07)) ** 2 + (v + 0.07) ** 2) / 0.004) for s in (-1, 1))
    heart_u, _, heart_a, _ = _heart_geometry(p)
    heart_depth = np.sqrt(np.clip(1.0 - ((u - heart_u) / heart_a) ** 2, 0.0, 1.0))
    attenuation = (
        thickness
        - 0.62 * air
        + markings
        + 0.08 * hila * lungs
        + 0.06 * _smoothstep(v / 0.6) * lungs
        + 0.06 * fields["heart"] * heart_depth
        + 0.04 * fields["mediastinum"]
        + 0.04 * fields["below"] * body
        - 0.22 * _airway_layer(frame) * body
        + 0.14 * _spine_profile(frame) * body
        + p.rib_density * _bone_layer(frame) * (1.0 - 0.5 * fields["below"]) * body
        + extra
    )
    if p.gastric_bubble:
        bubble = _inside(_ellipse_sdf(u - 0.42, v - p.diaphragm_left - 0.1, 0.09, 0.055), 2.0 * frame.edge)
        attenuation -= 0.3 * bubble * fields["below"]
    exposure = (1.0 - np.exp(-p.gain * np.clip(attenuation, 0.0, None))) / (1.0 - np.exp(-p.gain * 1.4))
    image = p.black + (p.white - p.black) * np.clip(exposure, 0.0, 1.0) ** p.gamma
    image = image + p.heel * v + p.noise_sigma * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask


def _apply_finding(
    finding: Finding,
    p: Patient,
    frame: _Frame,
    fields: dict[str, np.ndarray],
    extra: np.ndarray,
    markings: np.ndarray,
    air: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Add ``finding`` to the attenuation terms (each H x W); returns ``(extra, markings, air, mask)``."""
    u, v, edge = frame.u, frame.v, frame.edge
    q = finding.params
    lung = fields["lung_left"] if finding.side > 0 else fields["lung_right"]
    if finding.kind == "nodule":
        du, dv = u - q["u"], v - q["v"]
        r = np.sqrt(du * du + dv * dv)
        cos, sin = du / np.maximum(r, 1e-6), dv / np.maximum(r, 1e-6)
        cos3, sin3 = 4.0 * cos**3 - 3.0 * cos, 3.0 * sin - 4.0 * sin**3  # cos(3 angle), sin(3 angle)
        lobes = cos3 * np.cos(q["phase"]) - sin3 * np.sin(q["phase"])
        dist = r / (q["radius"] * (1.0 + q["lobulation"] * lobes))
        extra = extra + q["density"] * np.sqrt(np.clip(1.0 - dist**2, 0.0, 1.0)) ** 0.6
        mask = dist < 1.0
    elif finding.kind == "consolidation":
        rng = np.random.default_rng(finding.seed)
        blob = np.exp(-((u - q["u"]) ** 2 + (v - q["v"]) ** 2) / (2.0 * q["radius"] ** 2))
        patches = blob + 0.22 * _bandpass_noise(rng, frame.size, 0.0, 12.0)
        opacity = _smoothstep((patches - 0.3) / 0.4) * lung
        bronchi = _LineLayer(frame)
        origin = np.array([finding.side * (p.mediastinum_half_width + 0.06), -0.05])
        for _ in range(3):
            target = np.array([q["u"], q["v"]]) + rng.uniform(-0.7, 0.7, 2) * q["radius"]
            bronchi.polyline(np.stack([origin, target]), np.array([0.009, 0.005]))
        extra = extra + q["density"] * opacity * (1.0 - 0.5 * bronchi.result(blur=0.8))
        mask = (opacity > 0.5) & (lung > 0.5)
    elif finding.kind == "effusion":
        lateral = finding.side * u
        base = p.diaphragm_left if finding.side > 0 else p.diaphragm_right
        outer, inner = p.thoracic_half_width, p.mediastinum_half_width
        top = base - q["level"] + q["meniscus"] * np.clip((outer - lateral) / (outer - inner), 0.0, 1.0) ** 2
        fluid = _smoothstep((v - top) / 0.05) * lung
        extra = extra + q["density"] * fluid * (0.7 + 0.3 * _smoothstep((v - top) / 0.25))
        markings = markings * (1.0 - fluid)
        mask = (fluid > 0.5) & (lung > 0.5)
    elif finding.kind == "pneumothorax":
        # the lung shrinks towards a point at its medial base: an apical and lateral pleural air space
        c = q["collapse"]
        anchor = np.array(
            [finding.side * (p.mediastinum_half_width + 0.1), 0.5 * (p.diaphragm_left + p.diaphragm_right)]
        )
        shrunk = c * _lung_envelope_sdf(
            p, anchor[0] + (u - anchor[0]) / c, anchor[1] + (v - anchor[1]) / c, finding.side
        )
        collapsed = _inside(shrunk, 1.5 * edge) * lung
        pleural = lung - collapsed
        markings = markings * collapsed
        air = air + q["darkening"] / 0.62 * pleural - 0.15 * collapsed
        extra = extra + 0.1 * np.exp(-((shrunk / 0.006) ** 2)) * lung
        mask = (pleural > 0.5) & (lung > 0.5)
    else:
        mask = fields["heart"] > 0.5
    return extra.astype(np.float32), markings, air, mask


def synthesize_radiograph(
    rng: np.random.Generator, size: int = 256, finding: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a patient (and a finding of kind ``finding`` if given) and render it.

    Returns:
        image: float32 (size x size) in [0, 1]; mask: bool (size x size), non-empty iff ``finding`` is given.
    """
    patient = sample_patient(rng)
    spec = None if finding is None else sample_finding(rng, patient, finding)
    return render_radiograph(patient, size, spec)
