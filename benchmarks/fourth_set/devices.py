"""Foreign objects of the fourth set, drawn as strokes in the patient frame, in normal and abnormal images alike.

Each object is drawn with its own probability per image (independent of any finding):

- central venous catheter (14 %): from the right or left internal jugular or subclavian vein down the
  brachiocephalic vein to a tip in the superior vena cava or at the cavo-atrial junction;
- nasogastric tube (8 %): down the oesophagus just left of the spine, through the hiatus, tip curling in
  the stomach under the left dome, with a radiopaque stripe and side-hole gaps near the tip;
- sternotomy wires (7 %): 4-7 twisted loops stacked along the sternum over the mediastinum;
- pacemaker (6 %): a rounded can with a denser battery and header in the left (80 %) or right
  infraclavicular region, one or two leads looping over the superior vena cava into the right atrium and the
  right-ventricular apex;
- ECG electrodes (22 %): 3-5 faint round pads with a dense central snap, with a fine wire towards the field
  edge;
- gown buttons (10 %): 2-4 discs with four holes in a vertical row;
- necklace (8 %): a chain of beads hanging round the neck, with a pendant in half of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shape_model import open_spline

__all__ = ["Stroke", "sample_devices", "circle"]

_RATES = {"cvc": 0.14, "ngt": 0.08, "sternotomy": 0.07, "pacemaker": 0.06, "ecg": 0.22, "buttons": 0.10,
          "necklace": 0.08}


@dataclass(frozen=True)
class Stroke:
    """A polyline ``N x 2`` (patient frame) drawn ``width`` wide (patient units) with attenuation ``value``
    (soft-tissue units); ``fill``: a filled polygon instead; ``closed``: the outline closes."""

    points: np.ndarray
    width: float
    value: float
    fill: bool = False
    closed: bool = False


def circle(centre: np.ndarray, radius: float | tuple[float, float], n: int = 24) -> np.ndarray:
    """``n x 2`` points on a circle (or an axis-aligned ellipse of radii ``(ru, rv)``) round ``centre``."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.asarray(centre) + np.stack([np.cos(t), np.sin(t)], 1) * np.broadcast_to(radius, (2,))


def _tube(rng: np.random.Generator, knots: list[tuple[float, float]], width: float, value: float) -> Stroke:
    points = np.asarray(knots) + rng.normal(0.0, 0.01, (len(knots), 2))
    return Stroke(open_spline(points, 12), width, value)


def _cvc(rng: np.random.Generator) -> list[Stroke]:
    side = -1.0 if rng.uniform() < 0.7 else 1.0
    tip = (-0.07, float(rng.uniform(-0.05, 0.22)))
    if rng.uniform() < 0.6:  # internal jugular
        knots = [(0.2 * side, -1.7), (0.17 * side, -1.25), (0.1 * side - 0.04, -0.8), (-0.08, -0.45), tip]
    else:  # subclavian
        knots = [(0.95 * side, -1.15), (0.6 * side, -0.98), (0.25 * side, -0.85), (-0.07, -0.55), tip]
    return [_tube(rng, knots, 0.014, float(rng.uniform(0.5, 0.9)))]


def _ngt(rng: np.random.Generator) -> list[Stroke]:
    u = float(rng.uniform(0.0, 0.05))
    tip = (float(rng.uniform(0.25, 0.45)), float(rng.uniform(0.75, 0.95)))
    knots = [(u - 0.02, -1.8), (u, -1.0), (u + 0.02, 0.0), (u + 0.06, 0.55), (0.2, 0.78), tip]
    line = _tube(rng, knots, 0.012, 0.55)
    holes = [Stroke(p[None] + circle((0, 0), 0.012, 8), 0.0, 0.0, fill=True) for p in line.points[-14:-2:4]]
    return [line, *holes]


def _sternotomy(rng: np.random.Generator) -> list[Stroke]:
    strokes = []
    top = float(rng.uniform(-0.75, -0.6))
    for v in np.linspace(top, top + float(rng.uniform(0.7, 0.95)), int(rng.integers(4, 8))):
        centre = np.array([rng.normal(0.0, 0.02), v])
        loop = circle(centre, (float(rng.uniform(0.06, 0.09)), 0.018), 16)
        strokes.append(Stroke(loop, 0.009, 2.5, closed=True))
        strokes.append(Stroke(centre + np.array([(0.0, 0.0), (0.012, -0.03), (-0.01, -0.045)]), 0.012, 3.0))
    return strokes


def _pacemaker(rng: np.random.Generator) -> list[Stroke]:
    side = 1.0 if rng.uniform() < 0.8 else -1.0
    can = np.array([0.62 * side, -0.78]) + rng.normal(0.0, 0.04, 2)
    body = Stroke(circle(can, (0.12, 0.085), 28), 0.0, 2.5, fill=True)
    battery = Stroke(circle(can + (0.02 * side, 0.015), (0.07, 0.05), 20), 0.0, 1.5, fill=True)
    header = Stroke(can + np.array([(-0.06, -0.09), (0.06, -0.09), (0.05, -0.12), (-0.05, -0.12)]), 0.0, 2.0,
                    fill=True)
    leads = []
    for target in [(-0.18, 0.22), (0.18, 0.5)][: int(rng.integers(1, 3))]:
        knots = [tuple(can + (0.0, -0.1)), (0.3 * side, -0.98), (0.05 * side, -0.85), (-0.08, -0.35),
                 (-0.1, 0.05), target]
        leads.append(_tube(rng, knots, 0.016, 1.6))
    return [body, battery, header, *leads]


def _ecg(rng: np.random.Generator) -> list[Stroke]:
    strokes = []
    for _ in range(int(rng.integers(3, 6))):
        centre = np.array([rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 0.6)])
        strokes.append(Stroke(circle(centre, 0.06), 0.0, 0.12, fill=True))
        strokes.append(Stroke(circle(centre, 0.018, 12), 0.0, 2.0, fill=True))
        end = np.array([np.sign(centre[0]) * 1.8, rng.uniform(-1.8, 1.8)])
        knots = np.stack([centre, 0.6 * centre + 0.4 * end + rng.normal(0, 0.15, 2), end])
        strokes.append(Stroke(open_spline(knots, 12), 0.006, 0.6))
    return strokes


def _buttons(rng: np.random.Generator) -> list[Stroke]:
    u = float(rng.uniform(-0.5, 0.5))
    strokes = []
    for v in np.arange(int(rng.integers(2, 5))) * 0.3 + float(rng.uniform(-0.9, -0.3)):
        centre = np.array([u + rng.normal(0.0, 0.01), v])
        strokes.append(Stroke(circle(centre, 0.035), 0.0, 0.6, fill=True))
        strokes += [Stroke(circle(centre + d, 0.007, 8), 0.0, 0.0, fill=True)
                    for d in ((0.01, 0.01), (-0.01, 0.01), (0.01, -0.01), (-0.01, -0.01))]
    return strokes


def _necklace(rng: np.random.Generator) -> list[Stroke]:
    depth = float(rng.uniform(-0.95, -0.6))
    t = np.linspace(-1.0, 1.0, 41)
    chain = np.stack([0.3 * t, -1.6 + (depth + 1.6) * (1.0 - t**2) ** 0.6], 1)
    strokes = [Stroke(p[None] + circle((0, 0), 0.011, 8), 0.0, 2.5, fill=True) for p in chain]
    if rng.uniform() < 0.5:
        strokes.append(Stroke(circle(chain[20] + (0.0, 0.045), (0.03, 0.04), 16), 0.0, 3.0, fill=True))
    return strokes


_DRAW = {"cvc": _cvc, "ngt": _ngt, "sternotomy": _sternotomy, "pacemaker": _pacemaker, "ecg": _ecg,
         "buttons": _buttons, "necklace": _necklace}


def sample_devices(rng: np.random.Generator) -> tuple[tuple[str, ...], list[Stroke]]:
    """The objects of one image (names, in :data:`_RATES` order) and their strokes (see the module docstring)."""
    names = tuple(name for name, rate in _RATES.items() if rng.uniform() < rate)
    return names, [stroke for name in names for stroke in _DRAW[name](rng)]
